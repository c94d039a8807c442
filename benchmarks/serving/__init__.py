"""Drivers that measure serving: the load generator (``load``), every served experiment in one run
(``experiments``), the TTFT waterfall hop by hop (``waterfall``, with the ``echo_app`` it serves beside
the app), the step loop's fairness and hand-over (``fairness``, ``handoff``) and the router's body cost
(``body_memory``)."""
