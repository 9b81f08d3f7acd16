"""blastscope.engine"""
