"""Classical baselines (MD, umbrella sampling + MBAR, well-tempered metadynamics, OPES) and the
reference PMFs they produce.  They see a system only through its ``SimulationView``."""
