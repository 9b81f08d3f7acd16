"""blastscope.models"""
