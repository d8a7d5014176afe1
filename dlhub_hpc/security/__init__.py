"""Who may do what, and the walls between users: all of the hub's security code.

- ``keys``: CurveZMQ key pairs and the files they live in (users', the hub's, workers').
- ``zap``: the hub's side of CurveZMQ, a ZAP handler in the broker's loop.
- ``client``: the caller's side of CurveZMQ, and why a hub refused a caller.
- ``hub``: a hub's identities, access rules and publication operations.
- ``credentials``: worker credentials, one per servable owner, revocable.
- ``isolation``: how a worker of an untrusted owner is started (as that owner's Unix
  user, or inside a bubblewrap sandbox) so that it cannot read the hub's secrets.

Nothing outside this package reads or writes key files.
"""
