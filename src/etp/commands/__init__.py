"""etp.commands"""
