"""A folder that makes `import caffe` give netcompress.pycaffe in a fresh interpreter: `netcompress pycaffe` puts
it on PYTHONPATH, so that the processes a script starts (multiprocessing's spawn and forkserver children, which
import the script again; `python other_script.py`) find `caffe` as the script itself does."""
import os

FOLDER = os.path.dirname(os.path.abspath(__file__))
