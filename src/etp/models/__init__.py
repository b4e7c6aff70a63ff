"""etp.models"""
