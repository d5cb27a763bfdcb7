"""The Flower entry points: the ServerApp (``server_app:app``) and the ClientApp (``client_app:app``)."""
