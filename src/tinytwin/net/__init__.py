"""tinytwin.net"""
