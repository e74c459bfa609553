"""tinytwin.fleet"""
