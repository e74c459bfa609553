"""tinytwin.engines"""
