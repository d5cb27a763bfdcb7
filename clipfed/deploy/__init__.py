"""Deployment across machines: a SuperLink and SuperNodes (``cluster``) and their CLI (``cli``)."""
