"""docs/reliability.md stays true: every bad-input row names a test, and
every test it names exists."""
import ast
import os.path as osp
import re

from tests.helpers import ROOT

DOC = osp.join(ROOT, 'docs', 'reliability.md')


def defined_tests(path):
    """test functions and methods (Class::name) of a test file."""
    tree = ast.parse(open(path).read())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {f'{node.name}::{f.name}' for f in node.body
                      if isinstance(f, ast.FunctionDef)}
            names.add(node.name)
    return names


def test_reliability_doc_names_existing_tests():
    """`tests/.../test_x.py::name` or `test_x.py::name` (a file named
    earlier in the doc); `::name` alone refers to the last file named."""
    text = open(DOC).read()
    paths = {osp.basename(p): osp.join(ROOT, p)
             for p in re.findall(r'tests/[\w/]+\.py', text)}
    current, checked = None, 0
    for file, name in re.findall(
            r'`(?:tests/(?:\w+/)*)?(test_\w+\.py)?(?:::([\w:*]+))?`', text):
        if file:
            current = paths.get(file, osp.join(ROOT, 'tests', file))
            assert osp.exists(current), file
        if not name:
            continue
        assert current, name
        pattern = re.escape(name).replace(r'\*', '.*') + '$'
        assert any(re.match(pattern, n) for n in defined_tests(current)), \
            f'{current}::{name} is not a test'
        checked += 1
    assert checked >= 30


def test_every_bad_input_row_names_a_test():
    text = open(DOC).read()
    table = text[text.index('## Bad inputs'):]
    rows = [r for r in table.splitlines() if r.startswith('| ')][2:]
    assert len(rows) >= 20
    for row in rows:
        assert '::test_' in row.split('|')[-2], row
