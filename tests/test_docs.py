"""README.md and docs/*.md state facts the code has.

Checked without importing the package (cheap): every exit status the pages name equals the value of
``tbx11k/engine/exit_codes.py`` for the meaning given, the exit-status table lists every code, every
repository path the pages name exists, every page is linked from README.md, relative links and their
anchors resolve, each page opens with a summary paragraph, and README.md stays a front page.
"""
import ast
import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
DOCS_DIR = ROOT / 'docs'
EXIT_CODES_FILE = ROOT / 'tbx11k' / 'engine' / 'exit_codes.py'
README_MAX_LINES = 300
#: the page whose table lists every exit status, and the heading of that table
EXIT_TABLE_PAGE = DOCS_DIR / 'reliability.md'
EXIT_TABLE_HEADING = '## Exit statuses'

#: statuses that are not in exit_codes.py: success, a failure, a usage error (argparse's 2)
GENERIC_STATUSES = {0, 1, 2}

#: words that say which outcome a sentence is about; a status named in a sentence that has one of
#: these words must be the status of (one of) the outcomes named
MEANING_WORDS = {
    'EXIT_NOTHING_TO_TRAIN':
        r'nothing (?:left )?to train|already (?:complete|finished)|finished run',
    'EXIT_INCOMPATIBLE_CHECKPOINT': r'does not fit|incompatible|no training state',
    'EXIT_WRONG_LAYOUT': r'layout|effective batch',
    'EXIT_DIVERGED': r'diverg|non-finite|\bNaN\b',
    'EXIT_PREEMPTED': r'SIGUSR1|SIGTERM|signal|preempt|requeue',
    'EXIT_PRETRAINED_UNAVAILABLE': r'pretrained|backbone|download|network',
    'EXIT_UNTRUSTED_CHECKPOINT': r'untrusted|trust|unpickl|run code',
}

#: "exit 5", "exits 75", "exit status 2", "exit code 6", "exits with **75**", "(exit 6)"
EXIT_MENTION = re.compile(
    r'\bexit(?:s|ed|ing)?(?:\s+with)?(?:\s+(?:status|code))?\s+\**(\d+)\**(?![\w.])', re.I)
EXIT_NAME = re.compile(r'`(EXIT_[A-Z_]+)`')
#: repository paths named in the pages (inline code, code blocks, prose)
REPO_PATH = re.compile(
    r'(?<![\w/.-])((?:tools|configs|slurm|tests|tbx11k|docs|\.dev_scripts|\.ci)/[\w./*{},-]*)')
LINK = re.compile(r'\]\(([^)\s]+)\)')
FORBIDDEN = {
    'a path of the build machine': re.compile(r'\.\./shared|(?<![\w.])/work/'),
    'an issue number': re.compile(r'\bissues?\s+#?\d+|(?<![\w/])#\d+\b(?!\.)', re.I),
}


def doc_pages() -> List[Path]:
    return sorted(DOCS_DIR.glob('*.md'))


def all_pages() -> List[Path]:
    return [README] + doc_pages()


def exit_codes() -> Dict[str, int]:
    """``EXIT_*`` names and values of exit_codes.py, read with ``ast`` (no import)."""
    codes = {}
    for node in ast.parse(EXIT_CODES_FILE.read_text()).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id.startswith('EXIT_')
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int)):
            codes[node.targets[0].id] = node.value.value
    assert codes, f'no EXIT_* constants found in {EXIT_CODES_FILE}'
    return codes


def text_units(text: str) -> Iterator[Tuple[int, str]]:
    """Split markdown into the units a fact is stated in, with their first line number.

    A fenced code block is one unit; a table row is one unit; a paragraph or list item is split into
    sentences and clauses (at ``. `` before a capital and at ``; ``).
    """
    lines = text.split('\n')
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith('```'):
            start = i
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith('```'):
                i += 1
            yield start + 1, '\n'.join(lines[start + 1:i])
            i += 1
            continue
        if line.lstrip().startswith('|'):
            yield i + 1, line
            i += 1
            continue
        if not line.strip() or line.startswith('#'):
            if line.startswith('#'):
                yield i + 1, line
            i += 1
            continue
        start = i
        block = [line]
        i += 1
        while (i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith(
                ('|', '```', '#', '- ', '* ')) and not re.match(r'\s*\d+\. ', lines[i])):
            block.append(lines[i])
            i += 1
        for clause in re.split(r'(?<=[.!?])\s+(?=[A-Z`*(])|;\s+', ' '.join(block)):
            yield start + 1, clause


def exit_mentions(path: Path) -> Iterator[Tuple[int, int, str]]:
    """(line, status, unit) of every exit status named in prose, lists, tables and code."""
    for line, unit in text_units(path.read_text()):
        for match in EXIT_MENTION.finditer(unit):
            yield line, int(match.group(1)), unit


def test_exit_statuses_named_in_the_docs_are_the_codes():
    """A status named beside an outcome is that outcome's value in exit_codes.py."""
    codes = exit_codes()
    values = set(codes.values())
    problems = []
    found = 0
    for path in all_pages():
        for line, status, unit in exit_mentions(path):
            found += 1
            where = f'{path.relative_to(ROOT)}:{line}: exit {status} in {unit.strip()[:160]!r}'
            named = {name for name, words in MEANING_WORDS.items()
                     if name in codes and re.search(words, unit, re.I)}
            if status in GENERIC_STATUSES and status not in values:
                if any(codes[name] == status for name in named):
                    problems.append(where)
                continue
            if status not in values:
                problems.append(f'{where}: no such status in exit_codes.py {codes}')
            elif not named:
                problems.append(f'{where}: say which outcome (no word of {sorted(MEANING_WORDS)})')
            elif status not in {codes[name] for name in named}:
                problems.append(
                    f'{where}: the outcome named is {", ".join(f"{n}={codes[n]}" for n in named)}')
    assert found >= 10, f'only {found} exit statuses found in the docs: has the wording changed?'
    assert not problems, 'exit statuses in the docs differ from the code:\n' + '\n'.join(problems)


def exit_table_rows() -> Dict[str, int]:
    text = EXIT_TABLE_PAGE.read_text()
    assert EXIT_TABLE_HEADING in text, f'{EXIT_TABLE_PAGE.name} has no "{EXIT_TABLE_HEADING}"'
    section = text.split(EXIT_TABLE_HEADING, 1)[1].split('\n## ', 1)[0]
    rows = {}
    for row in section.split('\n'):
        cells = [c.strip() for c in row.strip().strip('|').split('|')]
        if len(cells) >= 2 and cells[0].isdigit():
            for name in EXIT_NAME.findall(cells[1]):
                rows[name] = int(cells[0])
    return rows


def test_exit_status_table_lists_every_code():
    codes = exit_codes()
    rows = exit_table_rows()
    assert rows == codes, (
        f'the table under "{EXIT_TABLE_HEADING}" in {EXIT_TABLE_PAGE.relative_to(ROOT)} '
        f'({rows}) differs from {EXIT_CODES_FILE.relative_to(ROOT)} ({codes})')


def test_exit_code_names_in_the_docs_exist_with_their_values():
    """`EXIT_NAME` written beside a number ("| 75 | `EXIT_PREEMPTED`", "75 (`EXIT_PREEMPTED`)")."""
    codes = exit_codes()
    problems = []
    for path in all_pages():
        for number, text in enumerate(path.read_text().split('\n'), 1):
            for match in EXIT_NAME.finditer(text):
                name = match.group(1)
                if name not in codes:
                    problems.append(f'{path.relative_to(ROOT)}:{number}: {name} is not in '
                                    f'exit_codes.py')
                    continue
                before = re.search(r'(\d+)\s*\|?\s*\(?$', text[:match.start()])
                after = re.match(r'\s*\(?(\d+)\)', text[match.end():])
                for near in (before, after):
                    if near and int(near.group(1)) != codes[name]:
                        problems.append(f'{path.relative_to(ROOT)}:{number}: {name} written as '
                                        f'{near.group(1)}, the code has {codes[name]}')
    assert not problems, '\n'.join(problems)


def expand(path: str) -> List[str]:
    """``configs/dino_tbx11k_{1,2}gpu.py`` -> both names (one brace group at a time)."""
    match = re.search(r'\{([^{}]*)\}', path)
    if not match:
        return [path]
    return [p for part in match.group(1).split(',')
            for p in expand(path[:match.start()] + part + path[match.end():])]


def named_paths(path: Path) -> Set[str]:
    found = set()
    for raw in REPO_PATH.findall(path.read_text()):
        raw = raw.rstrip('.,:')
        if raw.endswith('...'):  # "tools/..." in prose: a placeholder, not a path
            continue
        if raw.startswith('tbx11k/') and not raw.endswith(('.py', '/', '}')):
            continue  # a metric key (tbx11k/TB_AP_all), not a module
        found.update(expand(raw))
    return found


def test_repository_paths_named_in_the_docs_exist():
    """Every tools/, configs/, slurm/, tests/, tbx11k/, docs/ path named exists (globs match)."""
    missing = []
    for page in all_pages():
        for name in sorted(named_paths(page)):
            if any(ch in name for ch in '*?['):
                exists = any(ROOT.glob(name))
            else:
                exists = (ROOT / name).exists()
            if not exists:
                missing.append(f'{page.relative_to(ROOT)}: {name}')
    assert not missing, 'paths named in the docs that the repository lacks:\n' + '\n'.join(missing)


def code_text(path: Path) -> str:
    """The page's code: fenced blocks and inline code, continuation lines joined."""
    text = path.read_text()
    blocks = re.findall(r'```[^\n]*\n(.*?)```', text, re.S)
    inline = re.findall(r'`([^`\n]+)`', re.sub(r'```.*?```', '', text, flags=re.S))
    return re.sub(r'\\\n\s*', ' ', '\n'.join(blocks + inline))


def test_make_targets_named_in_the_docs_exist():
    makefile = (ROOT / 'Makefile').read_text()
    targets = set(re.findall(r'^([\w-]+):', makefile, re.M))
    missing = [f'{page.relative_to(ROOT)}: make {target}'
               for page in all_pages()
               for target in re.findall(r'\bmake ([a-z][\w-]*)', code_text(page))
               if target not in targets]
    assert not missing, 'make targets the Makefile lacks:\n' + '\n'.join(missing)


def test_tool_options_named_in_the_docs_exist():
    """Every --option of a ``python tools/...`` / ``bash tools/...`` command is defined somewhere
    in the tools, the package or the Slurm scripts (a removed or misspelt option fails)."""
    patterns = ('tools/**/*.py', 'tools/**/*.sh', 'tbx11k/**/*.py', 'slurm/**/*.sh',
                'slurm/*.sbatch')
    sources = '\n'.join(p.read_text() for pattern in patterns for p in ROOT.glob(pattern))
    missing = []
    checked = 0
    for page in all_pages():
        for line in code_text(page).split('\n'):
            command = re.search(r'(?:python3?|bash|^)\s*(tools/[\w/.-]+\.(?:py|sh))(.*)', line)
            if not command:
                continue
            for option in re.findall(r'(?<![\w-])(--[a-z][\w-]*)', command.group(2).split(' #')[0]):
                checked += 1
                if not re.search(r'[\'"]' + re.escape(option) + r'[\'"= ]', sources):
                    missing.append(f'{page.relative_to(ROOT)}: {command.group(1)} {option}')
    assert checked >= 30, f'only {checked} options found in the docs\' commands'
    assert not missing, 'options that no tool defines:\n' + '\n'.join(sorted(set(missing)))


def test_every_docs_page_is_linked_from_the_readme():
    readme = README.read_text()
    linked = set(re.findall(r'\]\((docs/[\w.-]+\.md)(?:#[\w-]*)?\)', readme))
    pages = {f'docs/{page.name}' for page in doc_pages()}
    assert pages, 'docs/ holds no pages'
    assert pages <= linked, f'pages not linked from README.md: {sorted(pages - linked)}'


def heading_anchors(path: Path) -> Set[str]:
    """GitHub's anchors of a page's headings."""
    anchors = set()
    for line in path.read_text().split('\n'):
        if line.startswith('#'):
            title = line.lstrip('#').strip().lower()
            anchors.add(re.sub(r'\s', '-', re.sub(r'[^\w\s-]', '', title)))
    return anchors


def test_relative_links_and_anchors_resolve():
    broken = []
    for page in all_pages():
        for target in LINK.findall(page.read_text()):
            if re.match(r'[a-z]+:', target):
                continue  # https:, mailto:
            file_part, _, anchor = target.partition('#')
            linked = (page.parent / file_part).resolve() if file_part else page
            if not linked.exists():
                broken.append(f'{page.relative_to(ROOT)}: {target}')
            elif anchor and linked.suffix == '.md' and anchor not in heading_anchors(linked):
                broken.append(f'{page.relative_to(ROOT)}: {target} (no such heading)')
    assert not broken, 'broken links:\n' + '\n'.join(broken)


@pytest.mark.parametrize('page', [p.name for p in doc_pages()])
def test_docs_page_opens_with_a_summary_paragraph(page):
    lines = (DOCS_DIR / page).read_text().split('\n')
    assert lines[0].startswith('# '), f'docs/{page} does not start with a "# " title'
    body = [line for line in lines[1:] if line.strip()]
    paragraph = []
    for line in body:
        if line.startswith(('#', '|', '```', '- ', '* ', '>')):
            break
        paragraph.append(line)
    assert len(' '.join(paragraph).split()) >= 40, (
        f'docs/{page} should open with a summary paragraph under its title')


def test_readme_is_a_front_page():
    lines = README.read_text().split('\n')
    assert len(lines) <= README_MAX_LINES, f'README.md has {len(lines)} lines (at most 300)'


@pytest.mark.parametrize('what', sorted(FORBIDDEN))
def test_docs_name_no_build_machine_paths_or_issue_numbers(what):
    found = [f'{page.relative_to(ROOT)}:{number}: {line.strip()[:120]}'
             for page in all_pages()
             for number, line in enumerate(page.read_text().split('\n'), 1)
             if FORBIDDEN[what].search(line)]
    assert not found, f'{what} in the docs:\n' + '\n'.join(found)
