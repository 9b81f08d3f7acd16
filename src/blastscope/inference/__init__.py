"""blastscope.inference"""
