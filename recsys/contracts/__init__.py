"""The contracts between layers: events (`events`), tables (the lake), manifests (model directories).

The update protocol on `model-updates` lives in `recsys.protocol`.
"""
