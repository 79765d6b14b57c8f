"""The runner: the program inside each ``vault-runner`` Nomad task.

It takes the attempt's single-use claim, reads exactly the declared secrets,
runs the formula and redacts its output at the source. It is a separate
program from the reconciler (it talks to Vault itself, with ``requests``);
:mod:`reconciler.runner.entry` documents its steps and exit codes.
"""
