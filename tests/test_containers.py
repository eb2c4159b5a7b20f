"""Dockerfile and singularity.def build the same image: same base, same install, same entry.

No container engine runs here, so the recipes are read, and the install script they share is
checked against the package metadata.
"""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _docker() -> dict[str, object]:
    text = (ROOT / 'Dockerfile').read_text()
    return {
        'base': re.search(r'^FROM\s+(\S+)', text, re.MULTILINE).group(1),
        'install': re.findall(
            r'^RUN\s+(sh /tmp/mrctprep-src/container/install\.sh.*)$', text, re.MULTILINE
        ),
        'entry': re.search(r'^ENTRYPOINT\s+\["(\S+)"\]', text, re.MULTILINE).group(1),
        'user': re.search(r'^USER\s+(\S+)', text, re.MULTILINE).group(1),
        'env': dict(re.findall(r'(\w+)=(\S+)', text.split('ENV', 1)[1].split('USER')[0])),
    }


def _singularity() -> dict[str, object]:
    text = (ROOT / 'singularity.def').read_text()
    sections = dict(re.findall(r'^%(\w+)\n(.*?)(?=^%|\Z)', text, re.MULTILINE | re.DOTALL))
    return {
        'base': re.search(r'^From:\s+(\S+)', text, re.MULTILINE).group(1),
        'install': [line.strip() for line in sections['post'].splitlines() if line.strip()],
        'entry': re.search(r'exec (\S+) "\$@"', sections['runscript']).group(1),
        'env': dict(re.findall(r'export (\w+)=(\S+)', sections['environment'])),
    }


def test_both_recipes_share_base_install_and_entry_point():
    docker, singularity = _docker(), _singularity()
    assert docker['base'] == singularity['base']
    assert docker['install'] == singularity['install']
    assert len(docker['install']) == 1
    assert docker['entry'] == singularity['entry'] == 'mrctprep'
    for key in ('NIPYPE_NO_ET', 'MPLCONFIGDIR'):
        assert docker['env'][key] == singularity['env'][key]
    assert docker['env']['MRCTPREP_CONTAINER_TYPE'] == 'docker'
    assert singularity['env']['MRCTPREP_CONTAINER_TYPE'] == 'singularity'


def test_docker_runs_as_non_root_with_a_writable_home():
    docker = _docker()
    text = (ROOT / 'Dockerfile').read_text()
    assert docker['user'] not in ('root', '0')
    home = docker['env']['HOME']
    assert re.search(rf'useradd .*--home-dir {home}\b', text)


def test_install_script_installs_graphviz_pinned_torch_then_the_package():
    script = (ROOT / 'container' / 'install.sh').read_text()
    steps = [line for line in script.splitlines() if line and not line.startswith('#')]
    graphviz = next(i for i, s in enumerate(steps) if 'apt-get install' in s and 'graphviz' in s)
    torch = next(i for i, s in enumerate(steps) if 'pip install' in s and 'torch==2.13.0' in s)
    package = next(i for i, s in enumerate(steps) if s.strip().endswith('"$source_dir[combat]"'))
    assert graphviz < torch < package


def test_entry_point_is_the_packaged_console_script():
    setup = configparser.ConfigParser()
    setup.read(ROOT / 'setup.cfg')
    scripts = setup['options.entry_points']['console_scripts'].strip().splitlines()
    assert 'mrctprep = mrctprep.cli.main:main' in [s.strip() for s in scripts]
    from mrctprep.cli.main import main

    assert callable(main)


def _readme_command(marker: str) -> str:
    readme = (ROOT / 'README.md').read_text()
    command = re.search(rf'<!-- {marker} -->\s*```(?:bash|sh)?\n(.+?)\n```', readme, re.DOTALL)
    assert command, f'the README marks a command with <!-- {marker} -->'
    return command.group(1).strip()


def test_ci_runs_the_readme_test_command_verbatim():
    assert _readme_command('test-command') in (ROOT / '.ci' / 'run').read_text()


def test_the_readme_demo_command_sets_up_as_ci_does_and_runs_the_default_pipelines():
    """The main command's set-up is CI's (up to installing the package without the test
    extra), and its run is the demo_run fixture's: the participant level, default pipelines."""
    from mrctprep.cli.main import parse_command_line
    from mrctprep.workflows.pipelines import DEFAULT_PIPELINES

    main = _readme_command('main-command').split(' && ')
    tests = _readme_command('test-command').split(' && ')
    assert (
        main[:3]
        == tests[:3]
        == ['python3 -m venv .venv', '. .venv/bin/activate', 'pip install torch==2.13.0']
    )
    assert (main[3], tests[3]) == ('pip install .', "pip install -e '.[test,combat]'")
    demo, run = (shlex.split(step) for step in main[4:])
    assert demo[:2] == ['mrctprep', 'demo'] and run[0] == 'mrctprep'
    opts = parse_command_line(run[1:])
    assert opts.bids_dir.name == Path(demo[2]).name and opts.analysis_level == 'participant'
    assert opts.pipelines == DEFAULT_PIPELINES


def test_every_folder_of_modules_is_installed_as_a_package():
    """``packages = find:`` installs only folders with an ``__init__.py``: one without would
    work from the source tree and break once installed (``pip install .``)."""
    from setuptools import find_packages

    folders = {
        '.'.join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / 'mrctprep').rglob('*.py')
        if '__pycache__' not in path.parts
    }
    assert folders <= set(find_packages(str(ROOT), include=['mrctprep*']))
