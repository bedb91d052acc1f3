import sys
from pathlib import Path

# The helper module fm_gaussian.py sits next to these tests.
sys.path.insert(0, str(Path(__file__).parent))
