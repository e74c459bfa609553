"""tinytwin.wire"""
