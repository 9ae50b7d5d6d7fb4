"""Datasets for GeoRSCLIP: RS5M shards, evaluation sets and the streaming training loader."""
