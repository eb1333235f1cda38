import os
import sys

# the tiny dataset trees live with the dataset tests
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "datasets"))
