"""blastscope.gui"""
