"""blastscope.data"""
