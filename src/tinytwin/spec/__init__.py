"""tinytwin.spec"""
