"""blastscope.metrics"""
