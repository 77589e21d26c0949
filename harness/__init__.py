"""What stands in for production in the demo, the tests and the benchmarks.

The embedded Kafka broker (:mod:`harness.kafka`), a real Prometheus (:mod:`harness.prometheus`),
headless Chromium (:mod:`harness.chromium`), the Debian installer they share
(:mod:`harness.debian`), the child-process helper they all use (:mod:`harness.process`), a
dataflow run as ``python -m bytewax.run`` (:mod:`harness.dataflow`), and the synthetic workloads
(:mod:`harness.workload` cards, :mod:`harness.clickstream` clicks, :mod:`harness.income` census
interviews) with their generator CLI (:mod:`harness.generate`).
Nothing a running dataflow imports lives here: ``undertow/``, ``operators/``, ``connectors/`` and
``dataflows/`` never import ``harness`` (``tests/test_layering.py`` checks it).
"""
