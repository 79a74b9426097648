#!/usr/bin/env python3
"""Reports Rust functions over 80 lines and files over 600 lines (a file's
`#[cfg(test)] mod tests` block and test files under tests/ do not count).

    python3 scripts/sizes.py            # the report
    python3 scripts/sizes.py --check    # exit 1 when over the limits below
"""
import pathlib
import re
import sys

FN_LIMIT, FILE_LIMIT, FN_ALLOWED = 80, 600, 3
FN_START = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")


def code_lines(lines):
    """The file's lines before its unit-test module."""
    for i, line in enumerate(lines):
        if line.startswith("#[cfg(test)]") and i + 1 < len(lines) and lines[i + 1].startswith("mod tests"):
            return lines[:i]
    return lines


LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|b?\'(?:[^\'\\]|\\.)\'|//.*$')


def braces(line):
    """Opening minus closing braces, outside strings, chars and comments."""
    bare = LITERAL.sub("", line)
    return bare.count("{") - bare.count("}"), "{" in bare


def functions(lines):
    i = 0
    while i < len(lines):
        m = FN_START.match(lines[i])
        if m and not lines[i].rstrip().endswith(";"):
            depth, j, opened = 0, i, False
            while j < len(lines):
                delta, has_open = braces(lines[j])
                depth += delta
                opened = opened or has_open
                if opened and depth <= 0:
                    break
                j += 1
            yield m.group(6), i + 1, j - i + 1
        i += 1


def main():
    roots = [pathlib.Path("src"), *pathlib.Path("crates").glob("*/src")]
    long_fns, long_files = [], []
    for root in roots:
        for path in sorted(root.rglob("*.rs")):
            lines = code_lines(path.read_text().splitlines())
            if len(lines) > FILE_LIMIT:
                long_files.append((len(lines), str(path)))
            for name, line, n in functions(lines):
                if n > FN_LIMIT:
                    long_fns.append((n, f"{path}:{line} {name}"))
    for n, where in sorted(long_fns, reverse=True):
        print(f"function {n:4} lines  {where}")
    for n, where in sorted(long_files, reverse=True):
        print(f"file     {n:4} lines  {where}")
    print(f"{len(long_fns)} functions over {FN_LIMIT} lines (at most {FN_ALLOWED} allowed), "
          f"{len(long_files)} files over {FILE_LIMIT} lines")
    if "--check" in sys.argv and (len(long_fns) > FN_ALLOWED or long_files):
        sys.exit(1)


main()
