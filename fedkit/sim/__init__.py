"""Simulation: the in-process link, the event clock (``clock``), device profiles and completion
time (``devices``), availability (``availability``), trace files (``traces``), synchronous
round timing (``timing``) and FedAU participation patterns (``participation``)."""
