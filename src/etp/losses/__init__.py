"""etp.losses"""
