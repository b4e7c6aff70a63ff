"""etp.text"""
