"""etp.train"""
