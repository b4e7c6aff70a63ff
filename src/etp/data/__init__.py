"""etp.data"""
