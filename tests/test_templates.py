"""Template semantics: native values, strict undefined, the sandbox, filters, loops, positions.

Every template is rendered by compiled Jinja in one ImmutableSandboxedEnvironment; templates that
differ only in text, strings and names share one compiled template (their shape's). The shared
template must render exactly what the template's own compile renders, errors included: checked
here on listed and on generated templates.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jinja2 import TemplateSyntaxError
from stepchain.templates import TemplateFailure, Vars, environment, evaluate, render_value
from stepchain.templates.compiled import (
    compile_expression,
    compile_template,
    defined,
    single_expression,
)

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


def outcome(func):
    try:
        return "ok", func()
    except Exception as exc:  # both ways must fail the same way
        message = getattr(exc, "message", None) or str(exc)
        return "error", f"{type(exc).__name__}: {message}", getattr(exc, "lineno", None)


def jinja(source: str, context: dict) -> tuple:
    """What Jinja itself gives for a template: its own compile, nothing shared."""
    env = environment()
    try:
        inner = single_expression(source, env.parse(source))
    except TemplateSyntaxError:
        inner = None  # rendering reports the error
    if inner is not None:
        return outcome(
            lambda: defined(env.compile_expression(inner, undefined_to_none=False)(**context))
        )
    return outcome(lambda: env.from_string(source).render(context))


def ours(source: str, context: dict) -> tuple:
    return outcome(lambda: compile_template(source).render(context))


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("source", TEMPLATES)
def test_templates_render_like_jinja(source, context):
    assert ours(source, context) == jinja(source, context)


def test_most_templates_share_their_shape_template():
    compiled = [t for t in TEMPLATES + SHAPED if "{" in t and _compiles(t)]
    shared = [t for t in compiled if compile_template(t).shared]
    assert len(shared) >= len(compiled) * 2 // 3
    assert not compile_template("{{ ''.__class__ }}").shared  # `__` in a tag: compiled as written
    assert not compile_template("{{- inputs.quarter }}").shared  # whitespace control
    assert compile_template("{{ __t[0] }}").render({"__t": [1]}) == 1  # the user's own names


def test_expressions_evaluate_like_compile_expression():
    env = environment()
    for expr in ["inputs.top_n > 2", "steps.orders.output | length", "inputs.missing", "item.tags"]:
        expected = outcome(
            lambda e=expr: defined(env.compile_expression(e, undefined_to_none=False)(**CONTEXT))
        )
        assert outcome(lambda e=expr: compile_expression(e).render(CONTEXT)) == expected


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
    env = environment()
    source = "{{ " + a + " }} / {% if " + b + " %}T{% else %}F{% endif %}"
    assert ours(source, context) == jinja(source, context)
    native = outcome(lambda: defined(env.compile_expression(a, undefined_to_none=False)(**context)))
    assert ours("{{ " + a + " }}", context) == native
    assert outcome(lambda: compile_expression(a).render(context)) == native


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("source", SHAPED)
def test_templates_render_like_jinja_whatever_path_they_take(source, context):
    assert ours(source, context) == jinja(source, context)


# -- generated templates: the shared template renders what the template's own compile renders --
TEXTS = ["", "a ", "\n", "line\n\n", "é ", "}", " %} ", "x{", "steps.a ", "'q' ", "__k0__ ", "  "]
EXPRS = [
    "steps.orders.output", "steps['my-step'].output", 'steps["none"].output', "steps.nope.output",
    "steps.orders.status == 'completed'", "(steps.orders.output | string)[:12]",
    "steps.orders.output[0].name", "steps.orders.output.missing", "steps.orders.output | length",
    "inputs.quarter", "inputs.missing", "inputs.items", "inputs.pop", "inputs._hidden",
    "inputs.top_n + 1", "inputs.quarter + 1", "inputs.top_n // 0", "env.REGION", "secrets.S",
    "run.id", "item.name", "item['tags'][index - 1]", "index", "'lit'", '"dq"', "'a' ~ 'b'",
    "'x' if inputs.top_n > 2 else \"y\"", "'x' if false", "inputs.quarter | replace('Q', 'q')",
    "steps.orders.output | map(attribute='name') | join(',')", "inputs.flags | tojson",
    "'{\"k\": [1]}' | fromjson", "inputs.quarter is string", "[steps.orders.status, 'b']",
    "inputs.quarter.upper()", "'%s-%s' % ('a', inputs.top_n)", "'{}!'.format(inputs.quarter)",
    "v", "r", "loop.index", "m('arg')", "nope", "inputs.quarter | nosuchfilter",
    "inputs.quarter.__class__", "steps.orders.output.append(1)", "inputs.flags.pop()",
]  # fmt: skip
FILTERS_OR_TESTS = ["x | steps.orders", "x is steps.orders", "inputs.quarter | inputs.upper"]


@st.composite
def generated_templates(draw, depth=2):
    """Template text from the constructs users write, mostly well formed, some not."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(
            st.sampled_from(
                [
                    "text",
                    "text",
                    "out",
                    "out",
                    "out",
                    "if",
                    "for",
                    "set",
                    "block-set",
                    "macro",
                    "filter",
                    "odd",
                ]
            )
        )
        expr = draw(st.sampled_from(EXPRS))
        inner = draw(generated_templates(depth=depth - 1)) if depth > 0 else ""
        if kind == "text":
            parts.append(draw(st.sampled_from(TEXTS)))
        elif kind == "out":
            parts.append("{{ " + expr + " }}")
        elif kind == "if":
            parts.append(f"{{% if {expr} %}}{inner}{{% else %}}no{{% endif %}}")
        elif kind == "for":
            parts.append(f"{{% for r in {expr} %}}{inner}{{{{ r }}}}{{% endfor %}}")
        elif kind == "set":
            parts.append(f"{{% set v = {expr} %}}{inner}")
        elif kind == "block-set":
            parts.append(f"{{% set v %}}{inner}{{{{ {expr} }}}}{{% endset %}}{{{{ v }}}}")
        elif kind == "macro":
            parts.append(f"{{% macro m(a) %}}{inner}{{{{ a }}}}{{% endmacro %}}{{{{ {expr} }}}}")
        elif kind == "filter":
            parts.append(f"{{% filter upper %}}{inner}{{% endfilter %}}")
        else:
            parts.append(
                draw(
                    st.sampled_from(
                        [
                            "{{",
                            "}}",
                            "{% if x %}",
                            "{% endfor %}",
                            "'",
                            "{{- 1 -}}",
                            "{# c #}",
                            "{% raw %}{{ steps.x }}{% endraw %}",
                            "{{ " + draw(st.sampled_from(FILTERS_OR_TESTS)) + " }}",
                            "{% if " + draw(st.sampled_from(FILTERS_OR_TESTS)) + " %}y{% endif %}",
                        ]
                    )
                )
            )
    return "".join(parts)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(generated_templates(), st.sampled_from([CONTEXT, VARS_CONTEXT]))
def test_generated_templates_render_like_jinja(source, context):
    event("shared" if _compiles(source) and compile_template(source).shared else "as written")
    assert ours(source, context) == jinja(source, context)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(generated_templates())
def test_references_of_generated_templates_through_their_shape_are_jinjas(source):
    """Validation finds references through a template's shape (its parse is the one rendering
    compiles): the same references as the template's own parse, syntax errors included."""
    from stepchain.templates.refs import parsed_references, references

    def found(func):
        try:
            return func(source)
        except TemplateSyntaxError as exc:
            return f"syntax error: {exc.message} (line {exc.lineno})"

    expected = found(parsed_references)
    assert found(references) == ([] if "{{" not in source and "{%" not in source else expected)


def test_the_generated_constructs_take_the_shared_path():
    """The property above is about the shared path: the constructs it generates take it."""
    for expr in EXPRS:
        if "__" in expr or "nosuchfilter" in expr:
            continue  # `__` in a tag, an unknown filter: compiled as written
        for source in [
            "a {{ " + expr + " }} b",
            "{% if " + expr + " %}x{% endif %}\n",
            "{% for r in " + expr + " %}{{ r }}{% endfor %}",
            "{% set v %}y{{ " + expr + " }}{% endset %}{{ v }}",
            "{% macro m(a) %}z{{ a }}{% endmacro %}{{ " + expr + " }}!",
            "{{ " + expr + " }}",
        ]:
            if _compiles(source):  # `for r in x if y else z` is not one
                assert compile_template(source).shared, source


def _compiles(source: str) -> bool:
    try:
        compile_template(source)
        return True
    except TemplateSyntaxError:
        return False


def test_a_filter_or_test_named_like_a_root_key_is_not_shared():
    """`x | steps.a` names a filter `steps.a`: the shape's source would call it something else,
    so its template is compiled as written, and the error names what the user wrote."""
    for source in ["{{ 1 | steps.a }}", "{% if 1 is steps.a %}y{% endif %}"]:
        result = ours(source, CONTEXT)
        assert result == jinja(source, CONTEXT)
        assert "'steps.a'" in result[1]


# -- what users rely on ---------------------------------------------------------------------
def test_a_single_expression_renders_to_its_native_value():
    assert compile_template("{{ steps.orders.output }}").render(CONTEXT) == [
        {"name": "a", "amount": 2.5},
        {"name": "b", "amount": 4},
    ]
    assert compile_template("  {{ [inputs.top_n, none] }}\n").render(CONTEXT) == [3, None]
    assert compile_template("{{ inputs.top_n }}").render(CONTEXT) == 3
    assert compile_template("{{ inputs.top_n }} ").render(CONTEXT) == 3  # blanks around: native
    assert compile_template("x{{ inputs.top_n }}").render(CONTEXT) == "x3"
    assert compile_template("{{ inputs.top_n }}{{ 1 }}").render(CONTEXT) == "31"
    assert compile_template("{{- inputs.flags -}}").render(CONTEXT) == [True, False]
    assert compile_template("{{ {'k': index} }}").render(CONTEXT) == {"k": 2}
    assert compile_expression("inputs.flags").render(CONTEXT) == [True, False]
    assert compile_template("no tags {").render(CONTEXT) == "no tags {"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ nope }}", "'nope' is undefined"),
        ("{{ inputs.missing }}", "has no attribute 'missing'"),
        ("x {{ steps.orders.output.missing.deeper }}", "has no attribute 'missing'"),
        ("{{ steps.orders.output[9] }}", "has no element 9"),
        ("{% for x in nope %}{% endfor %}", "'nope' is undefined"),
        ("{{ 'a' if false }}", "no value"),
    ],
)
def test_undefined_is_an_error_that_names_what_is_missing(source, message):
    for context in (CONTEXT, VARS_CONTEXT):
        with pytest.raises(Exception) as info:
            compile_template(source).render(context)
        assert message in str(info.value)
        assert type(info.value).__name__ == "UndefinedError"
    if "{{" in source:
        expr = source[source.index("{{") + 2 : source.rindex("}}")]
        with pytest.raises(Exception) as info:
            compile_expression(expr).render(CONTEXT)
        assert message in str(info.value)


SANDBOX_ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ inputs.quarter.__class__ }}",
    "x {{ steps.orders.output.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ '{0.__class__}'.format('') }}",
    "{{ inputs.quarter.upper.__self__ }}",
    "{{ steps.orders.output.append(1) }}",
    "{{ inputs.flags.pop() }}",
    "{{ steps.orders.output.clear() }}",
    "{{ {}.update(a=1) }}",
    "{% set x = [] %}{{ x.append(1) }}",
    "{% set d = {} %}{{ d.setdefault('a', 1) }}",
    "{{ steps.orders.update }}",
]


@pytest.mark.parametrize("source", SANDBOX_ESCAPES)
def test_the_sandbox_refuses_private_attributes_and_mutation(source):
    for context in (CONTEXT, VARS_CONTEXT):
        with pytest.raises(Exception, match="unsafe") as info:
            compile_template(source).render(context)
        assert type(info.value).__name__ == "SecurityError"
    assert ours(source, VARS_CONTEXT) == jinja(source, VARS_CONTEXT)


def test_range_is_bounded():
    with pytest.raises(OverflowError, match="MAX_RANGE"):
        compile_template("{{ range(10 ** 9) | list | length }}").render(CONTEXT)


def test_context_roots_answer_names_before_dict_methods():
    context = {**VARS_CONTEXT, "inputs": Vars(items="an input", keys=[1], get="g")}
    assert compile_template("{{ inputs.items }} {{ inputs.get }}").render(context) == "an input g"
    assert compile_template("{{ inputs.keys }}").render(context) == [1]
    assert compile_template("{{ steps.values.output }}").render(VARS_CONTEXT) == "v"
    assert compile_template("{{ env.items() | list }}").render(VARS_CONTEXT) == [("REGION", "eu")]
    # any other name is the item, as on a plain dict (the sandbox judges attributes, not items)
    context = {"inputs": Vars(_hidden="h", update="u", pop=[1])}
    assert compile_template("{{ inputs._hidden }}{{ inputs.update }}").render(context) == "hu"
    assert compile_template("{{ inputs.pop }}").render(context) == [1]
    with pytest.raises(Exception, match="unsafe"):
        compile_template("{{ inputs.update }}").render({"inputs": Vars()})  # the method
    odd = Vars({"__class__": 1, "get": 2})  # Python's own lookups are a dict's
    assert isinstance(odd, dict) and type(odd) is Vars and dict(odd) == {"__class__": 1, "get": 2}
    # a plain dict answers with its method, as Jinja does
    assert compile_template("{{ x.items }}").render({"x": {"items": 1}})() == {"items": 1}.items()


def test_filters_tojson_fromjson_and_jinjas_own():
    render = lambda s: compile_template(s).render(CONTEXT)  # noqa: E731
    assert render("{{ {'a': '<é>'} | tojson }}") == '{"a": "<é>"}'
    assert render("x{{ [1] | tojson(indent=2) }}") == "x[\n  1\n]"
    assert render("{{ '{\"k\": [1, 2]}' | fromjson }}") == {"k": [1, 2]}
    assert render("{{ steps.orders.output | map(attribute='name') | join('+') | upper }}") == "A+B"
    assert render("{{ steps.orders.output | sum(attribute='amount') }}") == 6.5


def test_loops_conditions_and_assignments():
    render = lambda s: compile_template(s).render(CONTEXT)  # noqa: E731
    assert (
        render(
            "{% for o in steps.orders.output %}{{ loop.index }}. {{ o.name }}"
            "{% if not loop.last %}, {% endif %}{% endfor %}"
        )
        == "1. a, 2. b"
    )
    assert render("{% for o in inputs.empty %}x{% else %}none{% endfor %}") == "none"
    assert render("{% set x = 1 %}{% for i in [5] %}{% set x = i %}{% endfor %}{{ x }}") == "1"
    assert render("{% macro m(a) %}<{{ a }} {{ inputs.quarter }}>{% endmacro %}{{ m(1) }}") == (
        "<1 Q4 2023>"
    )
    assert render("keep\n") == "keep\n"  # trailing newline kept


def _locate(path: tuple) -> str:
    return "p.yaml:7:15: " + ".".join(map(str, path))


def test_render_errors_name_the_position_in_the_file():
    with pytest.raises(TemplateFailure) as info:
        render_value({"a": ["ok", "{{ inputs.missing }}"]}, CONTEXT, ("steps", 1), _locate)
    assert str(info.value).startswith("p.yaml:7:15: steps.1.a.1: template error: ")
    assert "has no attribute 'missing'" in str(info.value)
    # any error inside a user's template is the user's to fix
    for value in ["{{ 1 // 0 }}", "x {{ inputs.quarter + 1 }}", "{{ ''.__class__ }}", "{{ x"]:
        with pytest.raises(TemplateFailure, match=r"p\.yaml:7:15: steps\.2: template error: "):
            render_value(value, CONTEXT, ("steps", 2), _locate)
    with pytest.raises(TemplateFailure, match=r"p\.yaml:7:15: when: template error: .*unsafe"):
        evaluate("inputs.quarter.__class__", CONTEXT, ("when",), _locate)
    assert evaluate("inputs.top_n > 2 and 'Q4' in inputs.quarter", CONTEXT, (), _locate) is True


def test_templates_that_differ_only_in_names_and_text_share_one_parse():
    from stepchain.templates.compiled import _shape_template

    _shape_template.cache_clear()
    for i in range(50):
        source = f"step {i}: {{{{ steps.s{i}.output | upper }}}} for {{{{ inputs.q{i} }}}}"
        context = {"steps": {f"s{i}": {"output": f"o{i}"}}, "inputs": {f"q{i}": i}}
        assert compile_template(source).render(context) == f"step {i}: O{i} for {i}"
    assert _shape_template.cache_info().currsize == 1


def test_templates_that_differ_only_in_strings_share_one_parse():
    from stepchain.templates.compiled import _shape_native

    _shape_native.cache_clear()
    for i in range(50):
        source = f"{{{{ ['s{i}', (steps.s{i}.output | string)[:{16}]] }}}}"
        assert compile_template(source).render({"steps": {f"s{i}": {"output": i}}}) == [
            f"s{i}",
            str(i),
        ]
        when = f"steps.s{i}.status == 'completed{i}' and inputs.n > 0"
        context = {"steps": {f"s{i}": {"status": f"completed{i}"}}, "inputs": {"n": 1}}
        assert compile_expression(when).render(context) is True
    assert _shape_native.cache_info().currsize == 2


@pytest.mark.parametrize("source", SHAPED + TEMPLATES)
def test_references_through_a_shape_are_those_of_the_template(source):
    from jinja2 import TemplateSyntaxError
    from stepchain.templates.refs import parsed_references, references
    from stepchain.templates.shapes import shape_of

    try:
        expected = outcome(lambda: parsed_references(source))
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
    from stepchain.templates.refs import parsed_references, references

    assert references(expr, expression=True) == parsed_references("{{ " + expr + " }}")


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
    assert len(parsed) == len(set(parsed)) == 5, parsed  # one parse each, none twice


def test_sandbox_escapes_in_a_pipeline_fail_their_steps_through_the_cli(cli, write):
    """A pipeline an LLM wrote is run by the real command: escapes fail their own step, with the
    position in the file; validation has nothing against them (they are well-formed Jinja)."""
    path = write(
        "escapes.yaml",
        """
        version: 1
        name: escapes
        inputs:
          q: {type: string, default: "x"}
        steps:
          - id: data
            template: "{{ [1, 2] }}"
          - id: subclasses
            template: "{{ ''.__class__.__mro__[1].__subclasses__() }}"
          - id: globals
            template: "text {{ cycler.__init__.__globals__.os }}"
          - id: format
            template: "{{ '{0.__class__.__base__}'.format(inputs.q) }}"
          - id: mutate
            continue_on_error: true
            template: "{{ steps.data.output.append(3) }}"
          - id: after
            needs: [mutate]
            template: "{{ steps.data.output }}"
          - id: gate
            when: "inputs.q.__class__.__name__ == 'str'"
            template: ran
          - id: fan
            foreach: "inputs.q.__class__.__subclasses__()"
            template: "{{ item }}"
        """,
    )
    assert cli("validate", path).exit_code == 0
    result = cli("run", path, "--json")
    assert result.exit_code == 1
    steps = json.loads(result.stdout)["steps"]
    assert steps["data"]["output"] == steps["after"]["output"] == [1, 2]  # not mutated
    where = {"subclasses": "9:15", "globals": "11:15", "format": "13:15", "mutate": "16:15",
             "gate": "21:11", "fan": "24:14"}  # fmt: skip
    for step, position in where.items():
        assert steps[step]["status"] == "failed", step
        assert steps[step]["attempts"] == 0  # never retried
        assert steps[step]["error"].startswith(f"{path}:{position}: steps["), step
        assert "template error: access to attribute " in steps[step]["error"]
        assert "is unsafe" in steps[step]["error"]
    plan = cli("plan", path)
    assert "error    subclasses" in plan.stdout and "is unsafe" in plan.stdout


def test_templates_of_one_shape_are_parsed_once_from_loading_to_running(tmp_path, monkeypatch):
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from stepchain import Executor, load_pipeline
    from stepchain.templates.compiled import _shape_native, _shape_template

    _shape_template.cache_clear()
    _shape_native.cache_clear()
    parsed: list[str] = []
    real_parse = ImmutableSandboxedEnvironment.parse

    def counting_parse(self, source, *args, **kwargs):
        parsed.append(source)
        return real_parse(self, source, *args, **kwargs)

    monkeypatch.setattr(ImmutableSandboxedEnvironment, "parse", counting_parse)
    steps = "  - id: s0\n    template: go\n" + "".join(
        f"  - id: s{i}\n    when: \"steps.s{i - 1}.status == 'completed'\"\n"
        f'    template: "step {i}: {{{{ steps.s{i - 1}.output | upper }}}}"\n'
        for i in range(1, 21)
    )
    path = tmp_path / "shaped.yaml"
    path.write_text(f"version: 1\nname: shaped\nsteps:\n{steps}")
    result = Executor().run(load_pipeline(path), run_id="shaped")
    assert result.steps["s2"].output == "step 2: STEP 1: GO"
    assert result.steps["s20"].output == "step 20: " + result.steps["s19"].output.upper()
    assert len(parsed) == 2, parsed  # the template's shape and the `when`'s, once each
