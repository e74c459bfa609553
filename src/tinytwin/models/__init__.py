"""tinytwin.models"""
