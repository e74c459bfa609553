"""tinytwin.algorithms"""
