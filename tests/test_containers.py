"""The Docker image, and the Singularity image made from it: same install, same entry point.

No container engine runs here, so the recipes are read, and the install script they share is
checked against the package metadata.
"""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
from pathlib import Path

from mrctprep import __version__

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
        'env': dict(re.findall(r'(\w+)=(\S+)', text.split('\nENV', 1)[1].split('USER')[0])),
        'labels': dict(re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"', text)),
        'args': dict(re.findall(r'^ARG\s+(\w+)=(\S+)', text, re.MULTILINE)),
    }


def _singularity() -> dict[str, object]:
    text = (ROOT / 'singularity.def').read_text()
    sections = dict(re.findall(r'^%(\w+)\n(.*?)(?=^%|\Z)', text, re.MULTILINE | re.DOTALL))
    return {
        'bootstrap': re.search(r'^Bootstrap:\s+(\S+)', text, re.MULTILINE).group(1),
        'from': re.search(r'^From:\s+(\S+)', text, re.MULTILINE).group(1),
        'sections': sections,
        'entry': re.search(r'exec (\S+) "\$@"', sections['runscript']).group(1),
        'env': dict(re.findall(r'export (\w+)=(\S+)', sections['environment'])),
    }


def test_singularity_image_is_made_from_the_docker_image_of_this_version():
    singularity, docker = _singularity(), _docker()
    # Never `%files .`: that would copy .venv/, .git/ and work/ into the image.
    assert 'files' not in singularity['sections'] and 'post' not in singularity['sections']
    assert singularity['bootstrap'] == 'docker-daemon'
    assert singularity['from'] == f'mrctprep:{__version__}'
    assert f'docker build -t mrctprep:{__version__} .' in (ROOT / 'singularity.def').read_text()
    assert singularity['entry'] == docker['entry'] == 'mrctprep'
    for key in ('NIPYPE_NO_ET', 'MPLCONFIGDIR'):
        assert docker['env'][key] == singularity['env'][key]
    assert docker['env']['MRCTPREP_CONTAINER_TYPE'] == 'docker'
    assert singularity['env']['MRCTPREP_CONTAINER_TYPE'] == 'singularity'


def test_container_tag_and_labels_come_from_the_version_and_the_metadata():
    docker = _docker()
    setup = configparser.ConfigParser()
    setup.read(ROOT / 'setup.cfg')
    assert docker['labels'] == {
        'org.opencontainers.image.title': 'mrctprep',
        'org.opencontainers.image.description': 'BIDS App for MR and CT images',
        'org.opencontainers.image.version': __version__,
        'org.opencontainers.image.source': setup['metadata']['url'],
        'org.opencontainers.image.licenses': setup['metadata']['license'],
    }
    # No hard-coded tag: the outputs' GeneratedBy.Container.Tag is mrctprep:<version>.
    for recipe in ('Dockerfile', 'singularity.def'):
        assert 'MRCTPREP_CONTAINER_TAG' not in (ROOT / recipe).read_text()
        assert 'latest' not in (ROOT / recipe).read_text()


def test_docker_build_argument_chooses_cpu_or_cuda_torch():
    docker = _docker()
    assert docker['args'] == {'TORCH_BUILD': 'cpu'}
    assert docker['install'] == [
        'sh /tmp/mrctprep-src/container/install.sh /tmp/mrctprep-src "$TORCH_BUILD" '
        '&& rm -rf /tmp/mrctprep-src'
    ]
    script = ROOT / 'container' / 'install.sh'
    refused = subprocess.run(
        ['sh', script, '/nonexistent', 'rocm'], capture_output=True, text=True
    )
    assert (refused.returncode, refused.stderr) == (
        2,
        'install.sh: the torch build is cpu or cuda, not rocm\n',
    )  # before anything is installed
    builds = dict(re.findall(r'^\s+(\w+)\) (pip install .*?) ;;', script.read_text(), re.M))
    assert builds['cpu'].endswith('--index-url https://download.pytorch.org/whl/cpu torch==2.13.0')
    assert builds['cuda'] == 'pip install --no-cache-dir torch==2.13.0'


def test_docker_runs_as_non_root_with_a_home_any_user_can_write():
    docker = _docker()
    text = (ROOT / 'Dockerfile').read_text()
    assert docker['user'] not in ('root', '0')
    home = docker['env']['HOME']
    assert re.search(rf'useradd .*--home-dir {home}\b', text)
    assert f'chmod 1777 {home}' in text  # docker run -u $(id -u):$(id -g)


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
