"""blastscope.annotate"""
