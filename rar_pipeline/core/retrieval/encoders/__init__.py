"""Retrievers' encoders: one protocol, one module per backbone, `create_encoder` builds them."""
