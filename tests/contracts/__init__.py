"""Contract tests: the stand-in checked against the b24restdocs page each case names, driven by b24pysdk."""
