"""tinytwin.report"""
