"""The bad-input matrix: every public entry point times the bad inputs it may meet, with the exact outcome.

One module per area (``AREAS`` in ``_framework.py``), each row a test function; docs/BAD_INPUTS.md is generated from
them (``python tests/bad_inputs/doc.py --write-doc``) and ``test_table.py`` checks that the two agree.
"""
