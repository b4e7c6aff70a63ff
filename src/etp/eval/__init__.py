"""etp.eval"""
