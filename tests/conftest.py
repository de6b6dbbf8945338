import os
import sys

# tests import the plain-Python reference (tests/reference_sim.py) by module name
sys.path.insert(0, os.path.dirname(__file__))
