"""The AST interpreter renders exactly what compiled Jinja renders, errors included."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import nodes
from stepchain.templates.interpreter import Interpreter, Vars, supported
from stepchain.templates.jinja import environment

CONTEXT = {
    "inputs": {"quarter": "Q4 2023", "top_n": 3, "flags": [True, False], "empty": []},
    "steps": {
        "orders": {
            "output": [{"name": "a", "amount": 2.5}, {"name": "b", "amount": 4}],
            "status": "completed",
        },
        "my-step": {"output": "text out", "status": "skipped"},
        "none": {"output": None, "status": "failed"},
    },
    "env": {"REGION": "eu"},
    "secrets": {},
    "run": {"id": "r-1"},
    "item": {"name": "kitchen", "tags": ["x", "y"]},
    "index": 2,
}

# The same values the way the engine passes them: roots are Vars (names win over dict methods),
# with names that collide with dict methods, private-looking names and a str.format method.
VARS_CONTEXT = {
    **CONTEXT,
    "inputs": Vars(
        CONTEXT["inputs"], items="an input", pop="popped", _hidden="h", fmt="{} and {}".format
    ),
    "steps": Vars(CONTEXT["steps"], values={"output": "v", "status": "completed"}),
    "env": Vars(CONTEXT["env"]),
    "secrets": Vars(),
    "run": Vars(CONTEXT["run"]),
}
CONTEXTS = [pytest.param(CONTEXT, id="dicts"), pytest.param(VARS_CONTEXT, id="vars")]

TEMPLATES = [
    "plain text, no tags",
    "{{ inputs.quarter }}",
    "Sales {{ inputs.quarter }} top {{ inputs.top_n }}",
    "{{ steps.orders.output | tojson }}",
    "{{ steps['my-step'].output | upper }}",
    "{{ (steps.orders.output | string)[:16] }}",
    "{{ steps.orders.output[0].name }}-{{ steps.orders.output[-1]['amount'] }}",
    "{{ steps.orders.output | map(attribute='amount') | sum }}",
    "{{ steps.orders.output | sum(attribute='amount') | round(1) }}",
    "{{ steps.orders.output | length }} {{ inputs.empty | length }}",
    "{% for o in steps.orders.output %}{{ loop.index }}. {{ o.name }}{% if not loop.last %}, {% endif %}{% endfor %}",
    "{% for o in inputs.empty %}x{% else %}none{% endfor %}",
    "{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}",
    "{% set total = steps.orders.output | sum(attribute='amount') %}total {{ total * 2 }}",
    "{% if inputs.top_n > 5 %}big{% elif inputs.top_n > 2 %}medium{% else %}small{% endif %}",
    "{{ 'yes' if steps.none.output is none else 'no' }}",
    "{{ item.name ~ '#' ~ index }} {{ item.tags | join('/') }}",
    "{{ [1, 2, 3][1:] }} {{ (1, 2) }} {{ {'k': [inputs.top_n]} }}",
    "{{ inputs.top_n // 2 }} {{ inputs.top_n % 2 }} {{ inputs.top_n ** 2 }} {{ -inputs.top_n }} {{ 7 / 2 }}",
    "{{ inputs.quarter in ['Q4 2023'] and 'Q1' not in inputs.quarter }}",
    "{{ steps.orders.status == 'completed' or false }}",
    "{{ inputs.flags | select | list }} {{ inputs.flags | reject | list | count }}",
    "{{ 'a' if false }}|",
    "{{ inputs.missing }}",
    "{{ steps.orders.output.missing.deeper }}",
    "{{ steps.orders.output[7] }}",
    "{{ inputs.top_n + 'x' }}",
    "{{ inputs.quarter.__class__ }}",
    "{{ inputs.quarter | nosuchfilter }}",
    "{% for x in inputs.top_n %}{{ x }}{% endfor %}",
    "  {%- if true -%}  trimmed  {%- endif -%}  ",
    "{{ inputs.quarter | replace('Q', 'quarter ') | title }}",
    "{{ steps.orders.output | selectattr('amount', 'gt', 3) | map(attribute='name') | first }}",
    "{{ index is even }} {{ inputs is mapping }} {{ inputs.nope is defined }}",
    "{{ range(3) | list }}",
    "{{ lipsum(1) is string }}",
    # attribute and item paths, each link on a dict, a Vars, a list or a string
    "{{ inputs.items }} {{ steps.values.output }} {{ inputs.keys }}",
    "{{ inputs.pop }}",
    "{{ inputs._hidden }}",
    "{{ inputs.fmt('a', 'b') }}",
    "{{ inputs.fmt is callable }}",
    "{{ steps.orders.output[0]['name'] }} {{ steps.orders.output[1].amount }}",
    "{{ steps.orders.output['name'] }}",
    "{{ steps.orders.output.name }}",
    "{{ steps.orders.output[0].keys }}",
    "{{ steps.orders.items }}",
    "{{ steps.orders.__class__ }}",
    "{{ steps.orders.output[9].name }}",
    "{{ inputs.quarter[0] }}{{ inputs.quarter.upper }}{{ inputs.quarter[1:3] }}",
    "{{ inputs['top_n'] }} {{ inputs.flags[0] }} {{ item['tags'][-1] }} {{ run.id }}",
    "{{ inputs.missing.deeper }}",
    "{{ steps.none.output.x }}",
    "{{ item.tags[index] }} {{ item.tags[index - 1] }}",
    "{{ item.tags[::-1] }} {{ inputs.quarter[2::2] }} {{ inputs.quarter[index:] }}",
    "{{ inputs.quarter['a':] }}",
    "{{ inputs.top_n[0] }} {{ inputs.quarter[none] }}",
    "{{ steps.orders.output | map(attribute='amount') | list }} {{ item.tags | join(', ') }}",
    "{{ inputs.quarter | default('none') }} {{ inputs.nope | default('none') }}",
    "{{ steps.orders.output | first | attribute_missing_filter_is_refused }}",
    "{{ steps.orders.output | sum(attribute='amount') }} {{ [3, 1] | sort | first }}",
    "{% for k, v in [['a', 1], ['b', 2]] %}{{ k }}={{ v }} {% endfor %}",
    "{% for a, b in [[1, 2, 3]] %}{{ a }}{% endfor %}",
    "{% for a, b in [[1]] %}{{ a }}{% endfor %}{% for a, b in [1] %}{{ a }}{% endfor %}",
    "{% for a, (b, c) in [[1, [2, 3]], [4, [5]]] %}{{ a }}{{ b }}{{ c }}{% endfor %}",
    "{% set a, b = [1, 2] %}{{ a }}{{ b }}{% set c, d = 'xy' %}{{ c }}",
    "{% set x = inputs.top_n %}{% for i in [1, 2] %}{% set x = i %}{{ x }}{% endfor %}{{ x }}",
]


def outcome(func):
    try:
        return "ok", func()
    except Exception as exc:  # both paths must fail the same way
        return "error", f"{type(exc).__name__}: {exc}"


def both(source: str, context: dict) -> tuple:
    env = environment()
    compiled = outcome(lambda: env.from_string(source).render(context))
    tree = env.parse(source)
    if not supported(tree, env):
        return compiled, compiled
    return compiled, outcome(lambda: Interpreter(env, tree).render(context))


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("source", TEMPLATES)
def test_interpreter_matches_compiled_jinja(source, context):
    compiled, interpreted = both(source, context)
    assert interpreted == compiled


def test_most_templates_take_the_fast_path():
    env = environment()
    fast = [t for t in TEMPLATES if supported(env.parse(t), env)]
    assert len(fast) >= len(TEMPLATES) - 8
    assert not supported(env.parse("{{ range(3) | list }}"), env)  # calls are compiled


def test_expressions_match_compile_expression():
    env = environment()
    for expr in ["inputs.top_n > 2", "steps.orders.output | length", "inputs.missing", "item.tags"]:
        tree = env.parse("{{ " + expr + " }}").body[0].nodes[0]
        expected = outcome(
            lambda e=expr: _strict(env.compile_expression(e, undefined_to_none=False)(**CONTEXT))
        )
        assert outcome(lambda t=tree: Interpreter(env, t).evaluate(CONTEXT)) == expected


def _strict(value):
    from jinja2.runtime import Undefined

    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    return value


NAMES = st.sampled_from(
    [
        "inputs.top_n",
        "inputs.quarter",
        "index",
        "item.name",
        "steps.orders.output",
        "inputs.flags",
        "3",
        "'s'",
        "none",
    ]
)
ITEMS = st.sampled_from(["", "", "[0]", "[1:]", "[:2]", "[::-1]", "['name']", ".name", "[index]"])
OPS = st.sampled_from(["+", "-", "*", "~", "==", "!=", "<", "and", "or", " in "])
FILTERS = st.sampled_from(
    ["", " | string", " | length", " | upper", " | first", " | tojson", " | list", " | int"]
)


@st.composite
def expressions(draw, depth=2):
    if depth == 0 or draw(st.booleans()):
        name = draw(NAMES)
        # Jinja's optimizer folds literal-only subexpressions at compile time through
        # environment.getitem, so `3[1:]` is Undefined there and a TypeError at run time (and
        # here); items are taken from context values, as templates do.
        suffix = draw(ITEMS) if name[0].isalpha() and name != "none" else ""
        return name + suffix + draw(FILTERS)
    left, right = draw(expressions(depth=depth - 1)), draw(expressions(depth=depth - 1))
    return f"({left} {draw(OPS)} {right})" + draw(FILTERS)


@settings(max_examples=300, deadline=None)
@given(expressions(), expressions(), st.sampled_from([CONTEXT, VARS_CONTEXT]))
def test_random_expressions_agree(a, b, context):
    from stepchain.templates.jinja import compile_expression, compile_template

    source = "{{ " + a + " }} / {% if " + b + " %}T{% else %}F{% endif %}"
    compiled, interpreted = both(source, context)
    assert interpreted == compiled
    assert outcome(lambda: compile_template(source).render(context)) == compiled
    native = outcome(
        lambda: _strict(environment().compile_expression(a, undefined_to_none=False)(**context))
    )
    assert outcome(lambda: compile_template("{{ " + a + " }}").render(context)) == native
    assert outcome(lambda: compile_expression(a)(**context)) == native


def test_nodes_outside_the_subset_are_refused():
    env = environment()
    for source in [
        "{% macro m() %}x{% endmacro %}{{ m() }}",
        "{{ 'a'.upper() }}",
        "{% for x in [1] recursive %}{% endfor %}",
    ]:
        assert not supported(env.parse(source), env), source
    assert isinstance(env.parse("{{ a }}").body[0], nodes.Output)


SHAPED = [
    *TEMPLATES,
    "s1 {{ steps.orders.output[0].name }} and {{ steps['my-step'].output | length }}\nnext",
    "x {{ 'inputs.quarter' }} {{ inputs.quarter }}",
    '{% for o in steps.orders.output %}<{{ o.name }}>{% endfor %} {{ inputs["quarter"] }}',
    "{{ inputs.top_n }}{{ inputs.quarter }}",
    "line one\r\n{{ inputs.quarter }}",
    "{{- inputs.quarter -}}  \n",
    "a {# comment #} {{ env.REGION }}",
    # string literals are placeholders of the shape too
    "{{ ['s1_2', (steps.orders.output | string)[:16]] }}",
    "  {{ ['x', 'y'] }}\n",
    "{{ inputs.quarter ~ ' / ' ~ \"dq\" ~ '' }}",
    "{{ 'a' 'b' }} {{ 'a' ~ 'b' }}",
    "{{ 'it''s' }}",
    "{{ '__k0__' }}",
    "{{ steps['my-step'].output ~ 'steps.orders' }} {{ inputs['quarter'] }}",
    "{% if steps.orders.status == 'completed' %}yes {{ 'it' }}{% else %}no{% endif %}",
    "{% for r in [steps.orders.output, steps['my-step'].output] %}\n- {{ (r | string)[:12] }}"
    " {{ loop.index }}\n{% endfor %}",
    "{{ inputs.quarter | replace('Q', 'quarter\nnew line ') }}",
    "{{ inputs.quarter\n  | lower }}\n\n{{ '\u00e9t\u00e9' }} {{ \"caf\u00e9\" | upper }}",
    "a{{{ inputs.quarter }}",
    "{{ inputs.quarter }}}",
    "{{ '{{ inputs.quarter }}' }}",
    "{{ inputs.top_n + 1 }}{{ inputs.top_n + 2 }}",
    "{% set x = 'k' %}{{ {'k': 1}[x] }}",
]


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("source", SHAPED)
def test_templates_render_like_jinja_whatever_path_they_take(source, context):
    from jinja2 import TemplateSyntaxError
    from stepchain.templates.jinja import _SINGLE_EXPR, _is_single_output, compile_template

    env = environment()
    try:
        native = _SINGLE_EXPR.match(source) and _is_single_output(env.parse(source))
    except TemplateSyntaxError:
        native = False
    if native:
        inner = _SINGLE_EXPR.match(source).group(1)
        expected = outcome(
            lambda: _strict(env.compile_expression(inner, undefined_to_none=False)(**context))
        )
    else:
        expected = outcome(lambda: env.from_string(source).render(context))
    assert outcome(lambda: compile_template(source).render(context)) == expected


def test_templates_that_differ_only_in_names_and_text_share_one_parse():
    from stepchain.templates.jinja import _shape_tree, compile_template

    _shape_tree.cache_clear()
    for i in range(50):
        compile_template(f"step {i}: {{{{ steps.s{i}.output | upper }}}} for {{{{ inputs.q{i} }}}}")
    assert _shape_tree.cache_info().currsize == 1


def test_templates_that_differ_only_in_strings_share_one_parse():
    from stepchain.templates.jinja import _shape_tree, compile_expression, compile_template

    _shape_tree.cache_clear()
    for i in range(50):
        source = f"{{{{ ['s{i}', (steps.s{i}.output | string)[:{16}]] }}}}"
        assert compile_template(source).render({"steps": {f"s{i}": {"output": i}}}) == [
            f"s{i}",
            str(i),
        ]
        when = f"steps.s{i}.status == 'completed{i}' and inputs.n > 0"
        context = {"steps": {f"s{i}": {"status": f"completed{i}"}}, "inputs": {"n": 1}}
        assert compile_expression(when)(**context) is True
    assert _shape_tree.cache_info().currsize == 2


@pytest.mark.parametrize("source", SHAPED + TEMPLATES)
def test_references_through_a_shape_are_those_of_the_template(source):
    from jinja2 import TemplateSyntaxError
    from stepchain.templates.jinja import _references, references
    from stepchain.templates.shapes import shape_of

    try:
        expected = outcome(lambda: _references(source))
    except TemplateSyntaxError:
        expected = None
    if shape_of(source) is None or expected[0] == "error":
        return
    assert references(source) == expected[1]


@pytest.mark.parametrize(
    "expr",
    [
        "steps.orders.status == 'completed' and inputs.top_n > 0",
        "inputs.flags",
        "steps['my-step'].output ~ 'x'",
        "steps.orders.output | map(attribute='name') | list",
        "item.tags | join('/')",
        "inputs.missing",
        "'a' 'b'",
    ],
)
def test_expression_references_through_a_shape(expr):
    from stepchain.templates.jinja import _references, references

    assert references(expr, expression=True) == _references("{{ " + expr + " }}")


def test_a_template_is_parsed_once_from_loading_to_running(tmp_path, monkeypatch):
    """Validation's parse of a template is the one its render uses (distinct templates cost a
    parse each, so a second one would double the cost of loading and then running)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from stepchain import Executor, load_pipeline

    parsed: list[str] = []
    real_parse = ImmutableSandboxedEnvironment.parse

    def counting_parse(self, source, *args, **kwargs):
        parsed.append(source)
        return real_parse(self, source, *args, **kwargs)

    monkeypatch.setattr(ImmutableSandboxedEnvironment, "parse", counting_parse)
    steps = "".join(
        f'  - id: s{i}\n    template: "{{% if {i} * 7 > 3 %}}{"+" * i}{{{{ {i} % 4 }}}}{{% endif %}}"\n'
        for i in range(1, 6)
    )
    path = tmp_path / "distinct.yaml"
    path.write_text(f"version: 1\nname: distinct\nsteps:\n{steps}")
    result = Executor().run(load_pipeline(path), run_id="once")
    assert [result.steps[f"s{i}"].output for i in range(1, 6)] == [
        "+1", "++2", "+++3", "++++0", "+++++1"
    ]  # fmt: skip
    assert parsed and len(parsed) == len(set(parsed))  # no text parsed twice
