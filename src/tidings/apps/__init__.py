"""The applications as the commands serve them, assembled at the top from the
layers below (docs/ARCHITECTURE.md):

- ``platform``: the ``/v2`` API with its dashboard (``tidings serve``);
- ``receiver_admin``: the receiver's private side, the inbox, read API and
  repairs behind a token on a listener of their own;
- ``receiver_service``: ``tidings receive``: the public webhook listener, the
  admin listener, and the background work in a follower process.
"""
