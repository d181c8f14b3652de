"""Hospital federation: train the served model across hospitals with Flower, scans stay home.

Two halves with one boundary between them:

* the model owner's and the hospitals' logic, free of Flower (``aggregate``, ``hospital``,
  ``sites``, ``outputs``, ``pki``), runs and is tested in the project's main venv;
* the Flower apps (``client_app``, ``server_app``) and the processes that run them
  (SuperLink, SuperNodes, ServerApp) live in the federation venv, ``.venv-fed``: flwr 1.42
  cannot share a venv with ocean-lib's exact ``cryptography`` pin (``../shared/FEDERATION.md``).

What crosses back into the main venv is files: the checkpoint, its metrics, plots and
provenance, and the archive of per-round updates.
"""
