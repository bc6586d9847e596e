"""``cli.py robustness``: adversarial and corruption error of finished runs.

Every attack works on pixels in [0, 1], before the suite's normalisation
(the attacked module applies it inside), under an L-infinity budget ``eps``;
what changes between the columns is only *which gradient* the attack
follows: the network's exact one, the rule's own backward path, or a BP
run's (transfer). Corruptions use torchvision's functional transforms.
Results go into each run folder as ``robustness.json`` (its format, name and
checked loader are ``benchmark.records``'), finished units of an interrupted
evaluation wait in ``robustness.partial.json``. docs/robustness.md has the
protocol.

One job per module; read them from the bottom up (each imports only those
above it in this list):

* :mod:`.attacks`: the attacks, by name (a registry of classes: adding one
  is one class and one ``@ATTACKS.register`` line);
* :mod:`.corruptions`: the corruptions, by name, the same way;
* :mod:`.settings`: options, defaults per dataset, checks; no torch (the one
  module ``cli.py`` imports);
* :mod:`.gradients`: the module an attack differentiates (true or rule
  gradient), the per-unit seeds;
* :mod:`.loading`: a run's kept models, loaded and checked against its record;
* :mod:`.transfer`: each run's BP source and the source's kept examples;
* :mod:`.jobs`: which runs to evaluate, and whether each is done;
* :mod:`.evaluation`: one run, unit by unit (resumable), merged with what an
  earlier call wrote;
* :mod:`.runner`: many runs in the shared worker pool; the executors
  (``benchmark.executors``: local, Slurm) are how the command runs them.
"""
