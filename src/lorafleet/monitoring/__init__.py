"""Watching what is served: the request log and feedback (`requests`), and monitors over them."""
