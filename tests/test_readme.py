"""The README's and the gallery's facts, read from them and checked against the code: their
commands compose (the keys and options exist), the keys, modules and files they name exist,
their links land, the run name of the first command, the suite's size and its test processes are the code's, and
the gallery's learning curves name the curves the code draws."""

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from cnn.config import Config, ImageFolderConfig, compose, register_configs
from cnn.config.compose import CONF_DIR, schema_keys
from cnn.errors import ConfigError

DOCS = {name: (ROOT / name).read_text() for name in ("README.md", "docs/gallery.md")}
README = DOCS["README.md"]
# Commands of files the reader is shown how to write, not files of this repository.
HYPOTHETICAL = ("### Adding a model", "### Adding a dataset", "### Adding an optimizer or schedule")
FAILING = {"python train.py batch_sise=10"}  # shown failing: they must fail, as shown


def section(text: str, heading: str) -> str:
    """The text under `heading` up to the next heading of its level or above (outside code blocks,
    where `# ...` is a comment)."""
    level, lines, fenced = len(heading.split(" ", 1)[0]), [], False
    for line in text.split(f"\n{heading}\n", 1)[1].split("\n"):
        fenced ^= line.startswith("```")
        if not fenced and re.match(rf"#{{1,{level}}} ", line):
            break
        lines.append(line)
    return "\n".join(lines)


def prose(text: str) -> str:
    """`text` without its code blocks and its hypothetical sections."""
    for heading in HYPOTHETICAL:
        if f"\n{heading}\n" in text:
            text = text.replace(section(text, heading), "")
    return re.sub(r"```.*?```", "", text, flags=re.S)


def spans(text: str) -> list[str]:
    """The inline code of `text`'s prose: `like this`."""
    return re.findall(r"`([^`\n]+)`", prose(text))


def blocks(text: str) -> list[str]:
    """The code blocks of `text`, but those of its hypothetical sections."""
    for heading in HYPOTHETICAL:
        if f"\n{heading}\n" in text:
            text = text.replace(section(text, heading), "")
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)


def commands(text: str, program: str, inline: bool = True) -> list[str]:
    """Every `program ...` command of `text` (code blocks, and with `inline` its inline code), from
    `program` on, without comments, placeholders (<settings>, ...) or the shell's line continuations."""
    lines = [line for block in blocks(text) for line in block.replace("\\\n", " ").splitlines()]
    found = []
    for line in lines + (spans(text) if inline else []):
        if program in line:
            command = line[line.index(program):].split(" #", 1)[0].split("&&", 1)[0].split("`", 1)[0]
            command = re.sub(r"<[^>]*>|\.\.\.|&\s*$", "", command)
            found.append(" ".join(command.split()))
    return found


def overrides_of(command: str) -> list[list[str]]:
    """The override lists a `python train.py` command composes: a sweep's first values, and each
    other value of each swept key in turn."""
    words = [w for w in command.split()[2:] if w not in ("-m", "--help")]
    first = [w.split("=", 1)[0] + "=" + w.split("=", 1)[1].split(",")[0] if swept(w) else w for w in words]
    variants = [first]
    for i, word in enumerate(words):
        if swept(word):
            key, values = word.split("=", 1)
            variants += [first[:i] + [f"{key}={value}"] + first[i + 1:] for value in values.split(",")[1:]]
    return variants


def swept(word: str) -> bool:
    """Whether an override is a sweep over values (a,b,c), not a value with commas in brackets."""
    return "=" in word and "," in word and not re.search(r"[\[(]", word)


TRAIN_COMMANDS = [c for text in DOCS.values() for c in commands(text, "python train.py")]


@pytest.mark.parametrize("command", sorted(set(TRAIN_COMMANDS)))
def test_every_train_command_composes(command):
    """What `python train.py` would start with: the keys exist, the options exist, the values are typed."""
    if "hydra.searchpath=" in command:  # the reader's own config directory
        pytest.skip("composes with the reader's own files only")
    for overrides in overrides_of(command):
        if command in FAILING:
            with pytest.raises(ConfigError):
                compose(*overrides)
        else:
            compose(*overrides)


def test_the_failing_command_fails_with_the_line_shown():
    shown = re.search(r"\$ python train.py batch_sise=10\nerror: (.*)\n", README).group(1)
    with pytest.raises(ConfigError) as error:
        compose("batch_sise=10")
    assert str(error.value) == shown


def test_the_tools_take_the_options_shown():
    """Each `python -m cnn...` command names a module that exists and options its parser takes."""
    tools = [c for text in DOCS.values() for c in commands(text, "python -m cnn.")]
    assert len(tools) > 5
    for command in tools:
        module = command.split()[2]
        if not module.islower():  # cnn.tools.NAME
            continue
        path = ROOT / (module.replace(".", "/") + ".py")
        assert path.exists(), command
        namespace = {}
        exec(f"from {module} import main", namespace)  # noqa: S102  (the module named in the README)
        help_text = io.StringIO()
        with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
            namespace["main"](["--help"])
        for flag in re.findall(r"(?<!\S)(--[a-z-]+)", command):
            assert re.search(rf"{flag}\b", help_text.getvalue()), f"{command}: {flag}"


def known_keys() -> set[str]:
    """Every key a command line can set: the schema's, the datasets', models' and optimizers'
    options (their YAML files hold every one), and Hydra's (with the launchers and the search)."""
    keys = set(schema_keys(Config)) | {f"dataset.{k}" for k in schema_keys(ImageFolderConfig)}
    for group in ("model", "optimizer", "distribute", "dataset"):
        keys.add(group)
        for path in (CONF_DIR / group).glob("*.yaml"):
            keys |= {f"{group}.{k}" for k in (OmegaConf.to_container(OmegaConf.load(path)) or {})
                     if k != "defaults"}
    keys.add("model._target_")
    register_configs()
    for context in (["+search=optuna", "hydra/sweeper/pruner=median", "hydra/launcher=joblib"],
                    ["hydra/launcher=slurm"]):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            hydra_node = hydra_compose("config", overrides=context, return_hydra_config=True).hydra
        keys |= {f"hydra.{k}" for k in flat_keys(OmegaConf.to_container(hydra_node, resolve=False))}
    return keys


def flat_keys(node, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in (node.items() if isinstance(node, dict) else ()):
        keys.add(prefix + str(key))
        keys |= flat_keys(value, f"{prefix}{key}.")
    return keys


def named_keys(text: str) -> set[str]:
    """The config keys `text` names in its prose: dotted ones (`dataset.data_dir`), and any
    key of `key=value` (`lr=0`), but not other dotted names (`results.json`)."""
    roots = {k.split(".", 1)[0] for k in schema_keys(Config)} | {"hydra"}
    named = set()
    for span in spans(text):
        key = span.lstrip("+").split("=", 1)[0]
        if re.search(r"\.(keras|json|csv|png|md|py|txt|log)$", key):  # a file: model.keras
            continue
        if re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", key) and key.split(".", 1)[0] in roots and ("." in key or "=" in span):
            named.add(key)
    return named


def test_every_key_the_readme_names_exists():
    known, named = known_keys(), set().union(*(named_keys(text) for text in DOCS.values()))
    assert len(named) > 40
    assert sorted(named - known - {"batch_sise"}) == []  # batch_sise: the misspelling shown failing
    table = section(README, "## Configuration").split("| key |", 1)[1]
    for row in table.split("\n")[2:]:
        if row.startswith("| `"):
            for key in re.findall(r"`([^`]+)`", row.split("|")[1]):
                assert key.rstrip(".*") in known or key == "model.*", key


def test_every_module_and_file_named_exists():
    """Paths (`cnn/training/steps.py`, `conf/experiment/`) and modules (`cnn.training.build.setup`:
    the module, then what it defines) named in the prose, and the links and images."""
    for name, text in DOCS.items():
        for span in spans(text):
            if re.fullmatch(r"(cnn|conf|tests|docs|hydra_plugins)/[\w./-]*", span):
                assert (ROOT / span).exists(), f"{name}: {span}"
            elif re.fullmatch(r"cnn(\.\w+)+", span):
                assert module_defines(span), f"{name}: {span}"
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose(text)):
            if not target.startswith("http"):
                assert (ROOT / name).parent.joinpath(target).exists(), f"{name}: {target}"


def module_defines(dotted: str) -> bool:
    """Whether `cnn.a.b` is a module (cnn/a/b.py, cnn/a/b/), or `cnn.a.b.name` a name cnn/a/b.py defines."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:i])
        path = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        if path.exists():
            rest = parts[i:]
            if not rest:
                return True
            names = {node.name for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
            return len(rest) == 1 and rest[0] in names
    return False


def test_every_link_to_a_heading_lands():
    for name, text in DOCS.items():
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)]+)\)", prose(text)):
            linked = text if not target else (ROOT / name).parent.joinpath(target).read_text()
            assert anchor in {slug(h) for h in re.findall(r"^#+ (.+)$", linked, re.M)}, f"{name}: {target}#{anchor}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_the_run_name_shown_is_the_codes():
    """The first command's run directory, wherever the README shows it (its log, What a run writes)."""
    from cnn import data
    from cnn.config import run_name

    setup = section(README, "## Set up and train")
    command = commands(setup, "python train.py", inline=False)[0]
    config = compose(*(re.sub(r"^dataset.data_dir=", f"dataset.data_dir={ROOT}/", w) for w in command.split()[2:]))
    named = run_name(config, data.fingerprint(data.load_dataset(config.dataset)))
    (first,) = re.findall(r"the README's first command `checkpoints/([^`]+)`", README)
    shown = set(re.findall(r"(?<![\w-])mnist-book_cnn-lr0\.001-bs100-seed0-[0-9a-f]{8}", README))
    assert str(SAMPLE.relative_to(ROOT)) in command and named == first and shown == {named}


def test_the_suite_size_is_the_collected_count():
    """`The whole suite (about N tests...`: within 5 % of what pytest collects (an exact N: exactly)."""
    about, figure = re.search(r"The whole suite \((about )?([\d,]+) tests[;)]", README).groups()
    figure = int(figure.replace(",", ""))
    collected = collected_tests()
    assert abs(collected - figure) <= (0.05 * figure if about else 0), f"{collected} tests collected"


def test_the_test_processes_named_are_pyprojects():
    """`-n N` in `pyproject.toml`: the README names the addopts the suite runs with."""
    (named,) = re.findall(r"`-n (\d+)` in `pyproject.toml`", README)
    assert f"-n {named}" in re.search(r'addopts = "(.*)"', (ROOT / "pyproject.toml").read_text()).group(1)


def collected_tests() -> int:
    """How many tests `pytest --collect-only` finds, collected in this process (the modules are
    imported already when the whole suite runs)."""

    class Count:
        items = 0

        def pytest_collection_finish(self, session):
            Count.items = len(session.items)

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = pytest.main(["--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider", "-p", "no:faulthandler",
                            "--capture=no", str(ROOT / "tests")], plugins=[Count()])
    assert code == 0, out.getvalue()[-3000:]
    return Count.items


def test_the_gallerys_curves_are_the_ones_its_command_draws():
    """The learning curves shown under a command name the curves that command draws now."""
    from cnn.reporting import plots

    gallery = DOCS["docs/gallery.md"]
    text = gallery.split("![learning curves]", 1)[0].rstrip().rsplit("\n\n", 1)[-1]  # the paragraph above it
    (command,) = commands(text, "python train.py")
    config = compose(*command.split()[2:])
    split = "val" if config.dataset.validation_split > 0 else "test"
    rows = [{"epoch": 1, "loss": 1.0, "accuracy": 0.5, f"{split}_loss": 1.0, f"{split}_accuracy": 0.5}]
    drawn = {t.get_text() for ax in plots.learning_curves_figure(rows).axes for t in ax.get_legend().get_texts()}
    named = set(re.search(r"curves?\s+(?:for|of)\s+(\w+)\s+and\s+(\w+)\b", text).groups())
    assert named == drawn == {"train", "validation"}
    epochs = re.search(r"(\d+)\s+epochs?\b", text).group(1)
    assert f"epochs={epochs}" in command  # the epochs said are the command's
    assert Path(ROOT / "docs" / "gallery" / "book_best_learning_curves.png").exists()
