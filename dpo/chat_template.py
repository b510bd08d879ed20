"""Chat templates: a conversation rendered exactly as a chat model's own template renders it, without Jinja.

A chat model was trained on one text layout of its conversations; its tokenizer folder carries that layout as
a Jinja `chat_template` (`Tokenizer.chat_template`: chat_template.jinja, tokenizer_config.json, or the GGUF's
`tokenizer.chat_template`, which dpo.interop.gguf copies). We do not run Jinja (not a runtime dependency):
`detect` recognises which family below a template is, by the fragments of its source that decide the text,
and `render` writes the same text in Python. tests/test_chat_template.py checks each family against
transformers' rendering of real models' templates (system prompt, multi-turn, with and without the
generation prompt), and every template it does not recognise must raise rather than render wrongly.

    family = detect(tokenizer.chat_template)           # or data.chat_template (check_family)
    prompt = render(family, messages[:-1], add_generation_prompt=True)   # ends where the reply starts
    text = render(family, messages, add_generation_prompt=False)         # starts with `prompt`
    end_of_turn(family)                                # "<|im_end|>": what the model emits to end its reply

FAMILIES (name: models whose template it is):
  chatml          ChatML without a default system prompt (OpenHermes-2.5, Qwen3-Instruct-2507)
  smollm2         ChatML, default system "You are a helpful AI assistant named SmolLM, ..." (SmolLM2-*-Instruct)
  qwen2.5         ChatML, default system "You are Qwen, created by Alibaba Cloud. ..." (Qwen2.5-*-Instruct)
  qwen3           ChatML with thinking (Qwen3): rendered as apply_chat_template does by default — the last
                  reply after the last user turn gets an empty "<think>\\n\\n</think>\\n\\n" block, earlier
                  replies lose any <think>...</think> part, the generation prompt has none
  llama3          Llama-3-*-Instruct: <|start_header_id|>role<|end_header_id|>, contents stripped
  llama3.1        Llama-3.1-*-Instruct: always a system header "Cutting Knowledge Date: December 2023\\nToday
                  Date: 26 Jul 2024\\n\\n" + the (stripped) system message
  llama3.2        Llama-3.2: the same with today's date ("%d %b %Y"), as transformers' strftime_now gives
  mistral         Mistral-7B-Instruct-v0.2 (its current template): " [INST] ... [/INST]", " reply</s>"; a
                  system message goes into the first user turn, then "\\n\\n"
  mistral-legacy  the template Mistral-7B-Instruct-v0.2 first shipped with (still in older copies and GGUFs):
                  "[INST] ... [/INST]reply</s>", no system role
  gemma           gemma-7b-it, gemma-2-*-it: <start_of_turn>user/model, stripped, no system role (refused)
  gemma3          gemma-3-*-it: the same; a system message goes into the first user turn, then "\\n\\n"
  phi3            Phi-3-mini-4k/128k-instruct: <|role|>\\n...<|end|>\\n, the eos token after the last turn
  phi3.5          Phi-3.5-mini: the same; an empty system message is left out
  zephyr          zephyr-7b-beta: <|role|>\\n...</s>\\n

Messages: a non-empty list of {"role": "system" | "user" | "assistant", "content": str}. Nothing else is
rendered (tool calls, reasoning fields, multimodal content), so anything else is refused, never dropped;
families whose templates require alternating user/assistant turns refuse other orders.
"""
import re
from datetime import datetime

from dpo.errors import UserError


class ChatTemplateError(UserError, ValueError):
    """A chat template we do not render, an unknown family name, or messages the template cannot take."""


ROLES = ("system", "user", "assistant")

# name -> how to render it: style (the renderer), end (the token that ends a reply), bos/eos (defaults for
# the bos_token/eos_token arguments), and the style's options.
FAMILIES = {
    "chatml": dict(style="chatml", end="<|im_end|>"),
    "smollm2": dict(style="chatml", end="<|im_end|>",
                    default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    "qwen2.5": dict(style="chatml", end="<|im_end|>",
                    default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    "qwen3": dict(style="chatml", end="<|im_end|>", think=True),
    "llama3": dict(style="llama3", end="<|eot_id|>", bos="<|begin_of_text|>"),
    "llama3.1": dict(style="llama3", end="<|eot_id|>", bos="<|begin_of_text|>", date="26 Jul 2024"),
    "llama3.2": dict(style="llama3", end="<|eot_id|>", bos="<|begin_of_text|>", date="today"),
    "mistral": dict(style="mistral", end="</s>", bos="<s>", eos="</s>", system=True),
    "mistral-legacy": dict(style="mistral", end="</s>", bos="<s>", eos="</s>", system=False),
    "gemma": dict(style="gemma", end="<end_of_turn>", bos="<bos>", system=False),
    "gemma3": dict(style="gemma", end="<end_of_turn>", bos="<bos>", system=True),
    "phi3": dict(style="phi3", end="<|end|>", eos="<|endoftext|>"),
    "phi3.5": dict(style="phi3", end="<|end|>", eos="<|endoftext|>", skip_empty_system=True),
    "zephyr": dict(style="zephyr", end="</s>", eos="</s>"),
}

# What `detect` looks for, first match wins: (family, fragments all present, fragments all absent), written in
# the form `_normalized` gives a template (literals in single quotes with real newlines, no whitespace outside
# them but what an expression's output is followed by). Each names the code that decides the text, so a
# variant that renders otherwise fails.
_CHATML_TURN = "'<|im_start|>'+message['role']+'\n'+message['content']+'<|im_end|>'+'\n'"
_QWEN_TURN = "'<|im_start|>'+message.role+'\n'+content+'<|im_end|>'+'\n'"
_LLAMA3_TURN = "'<|start_header_id|>'+message['role']+'<|end_header_id|>\n\n'+message['content']|trim+'<|eot_id|>'"
_LLAMA31_SYSTEM = ("messages[0]['content']|trim", "'Cutting Knowledge Date: December 2023\n'",
                   "'Today Date: '+date_string+'\n\n'", "{{-system_message}}", "{{-'<|eot_id|>'}}", _LLAMA3_TURN)
_ALTERNATE = "(message['role']=='user')!=(loop.index0%2==0)"
_GEMMA_TURN = "'<start_of_turn>'+role+'\n'+"
_PHI3_TURNS = tuple(f"'<|{role}|>\n'+message['content']+'<|end|>\n'" for role in ROLES) + (
    "{%ifadd_generation_prompt%}{{'<|assistant|>\n'}}{%else%}{{eos_token}}{%endif%}",)
SIGNATURES = (
    ("qwen3", ("'<|im_start|>system\n'+messages[0].content+'<|im_end|>\n'", _QWEN_TURN, "ns.last_query_index",
               "'<|im_start|>'+message.role+'\n<think>\n'+reasoning_content.strip('\n')+'\n</think>\n\n'"
               "+content.lstrip('\n')", "content.split('</think>')[-1].lstrip('\n')",
               "{%-ifenable_thinkingisdefinedandenable_thinkingisfalse%}"), ()),
    ("chatml", ("'<|im_start|>system\n'+messages[0].content+'<|im_end|>\n'", _QWEN_TURN),
     ("<think>", "reasoning", "system\nYou", "Youare")),      # Qwen3-Instruct-2507
    ("qwen2.5", ("'<|im_start|>system\n" + FAMILIES["qwen2.5"]["default_system"] + "<|im_end|>\n'",
                 "'<|im_start|>system\n'+messages[0]['content']+'<|im_end|>\n'",
                 "'<|im_start|>'+message.role+'\n'+message.content+'<|im_end|>'+'\n'"), ("<think>",)),
    ("smollm2", ("{%ifloop.firstandmessages[0]['role']!='system'%}{{'<|im_start|>system\nYou are a helpful AI "
                 "assistant named SmolLM, trained by Hugging Face<|im_end|>\n'}}{%endif%}", _CHATML_TURN), ()),
    ("chatml", ("{%formessageinmessages%}{{" + _CHATML_TURN + "}}{%endfor%}",), ("system",)),  # OpenHermes
    ("llama3.2", _LLAMA31_SYSTEM + ("strftime_now('%d %b %Y')",), ()),
    ("llama3.1", _LLAMA31_SYSTEM + ("{%-setdate_string='26 Jul 2024'%}",), ("strftime_now",)),
    ("llama3", ("{%ifloop.index0==0%}{%setcontent=bos_token+content%}{%endif%}", "{%setcontent=" + _LLAMA3_TURN),
     ("system",)),
    ("mistral", ("{{-bos_token}}", "' [INST] '+system_message+'\n\n'+message['content']+' [/INST]'",
                 "' [INST] '+message['content']+' [/INST]'", "{{-' '+message['content']+eos_token}}",
                 _ALTERNATE), ("tools",)),
    ("mistral-legacy", ("{{bos_token}}", "{{'[INST] '+message['content']+' [/INST]'}}",
                        "{{message['content']+eos_token}}", _ALTERNATE), ("system_message", "<<SYS>>")),
    ("gemma3", ("{{bos_token}}", "{%-setfirst_user_prefix=messages[0]['content']+'\n\n'-%}", _ALTERNATE,
                _GEMMA_TURN + "(first_user_prefixifloop.firstelse'')}}", "{{message['content']|trim}}",
                "{{'<end_of_turn>\n'}}", "{{'<start_of_turn>model\n'}}"), ()),
    ("gemma", ("{{bos_token}}{%ifmessages[0]['role']=='system'%}{{raise_exception('System role not supported')}}",
               _ALTERNATE, _GEMMA_TURN + "message['content']|trim+'<end_of_turn>\n'",
               "{{'<start_of_turn>model\n'}}"), ()),
    ("phi3.5", _PHI3_TURNS + ("message['role']=='system'andmessage['content']",), ("bos_token",)),
    ("phi3", _PHI3_TURNS, ("bos_token",)),
    ("zephyr", tuple(f"{{{{'<|{role}|>\n'+message['content']+eos_token}}}}\n" for role in ROLES) + (
        "{%ifloop.lastandadd_generation_prompt%}{{'<|assistant|>'}}\n",), ("bos_token", "<|end|>")),
)

_LITERAL_OR_SPACE = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\s+""")


def _normalized(template: str) -> str:
    """`template` with each string literal single-quoted and its \\n escapes as real newlines, without
    whitespace outside the literals except after an expression ("{{ x }}\\n" outputs that newline; the
    block tags' newlines go, as with transformers' trim_blocks): the form SIGNATURES are written in, whatever
    the source's spacing and quotes."""
    def one(m):
        s = m.group()
        if s.isspace():
            after_output = template.endswith("}}", 0, m.start()) and not template.endswith("-}}", 0, m.start())
            return s if after_output and not template.startswith(("{{-", "{%-", "{#-"), m.end()) else ""
        body = s[1:-1].replace("\\n", "\n").replace("\\" + s[0], s[0])
        return "'" + body + "'"
    return _LITERAL_OR_SPACE.sub(one, template)


def detect(template: str) -> str:
    """The family (a FAMILIES key) of a Jinja chat template, recognised by its source; ChatTemplateError when
    it is not one we render."""
    if not isinstance(template, str) or not template.strip():
        raise ChatTemplateError(f"no chat template to recognise (got {template!r}); set data.chat_template to "
                                f"one of {', '.join(FAMILIES)}")
    t = _normalized(template)
    for family, present, absent in SIGNATURES:
        if all(p in t for p in present) and not any(a in t for a in absent):
            return family
    start = " ".join(template.split())[:80]
    raise ChatTemplateError(f"chat template not recognised (it starts {start!r}); expected one of the families "
                            f"{', '.join(FAMILIES)} (ChatML, Llama-3, Mistral, Gemma, Phi-3, Zephyr templates); "
                            "set data.chat_template to the family that renders it the same")


def check_family(name: str) -> str:
    """`name` if it is a family we render (a data.chat_template value), else ChatTemplateError."""
    if name not in FAMILIES:
        raise ChatTemplateError(f"unknown chat template family {name!r}; expected one of {', '.join(FAMILIES)}")
    return name


def end_of_turn(family: str) -> str:
    """The token that ends an assistant reply in `family`: what the chat model emits when it is done."""
    return FAMILIES[check_family(family)]["end"]


def render(family: str, messages: list[dict], *, add_generation_prompt: bool, bos_token: str | None = None,
           eos_token: str | None = None) -> str:
    """The text `family`'s template gives for `messages`, as transformers' apply_chat_template(messages,
    tokenize=False, add_generation_prompt=...) does with the model's own template. bos_token / eos_token:
    the tokenizer's (None: the family's usual ones, e.g. "<|begin_of_text|>", "<s>", "<bos>", "</s>")."""
    spec = FAMILIES[check_family(family)]
    _check_messages(messages)
    bos = spec.get("bos", "") if bos_token is None else bos_token
    eos = spec.get("eos", "") if eos_token is None else eos_token
    return _RENDERERS[spec["style"]](family, spec, list(messages), add_generation_prompt, bos, eos)


# ----------------------------------------------------------------------------------------------------
# Checks and the renderers, one per style (each mirrors its templates line by line)

def _check_messages(messages):
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError(f"chat messages: expected a non-empty list of {{'role', 'content'}} dicts, got "
                                f"{messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatTemplateError(f"messages[{i}]: expected a {{'role', 'content'}} dict, got {type(m).__name__}")
        missing = [k for k in ("role", "content") if k not in m]
        extra = sorted(map(str, m.keys() - {"role", "content"}))
        if missing or extra:
            raise ChatTemplateError(f"messages[{i}]: expected exactly the keys 'role' and 'content'" +
                                    (f"; missing {', '.join(missing)}" if missing else "") +
                                    (f"; {', '.join(extra)} would not be rendered (tool calls, reasoning fields "
                                     "and the like are not supported)" if extra else ""))
        if m["role"] not in ROLES:
            raise ChatTemplateError(f"messages[{i}]: unknown role {m['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ChatTemplateError(f"messages[{i}] ({m['role']}): content must be a string, got "
                                    f"{type(m['content']).__name__}")


def _leading_system(family, spec, messages) -> tuple[str | None, list]:
    """(system content or None, the rest) for templates that take an optional first system message and then
    need user/assistant turns alternating, starting with user."""
    system = None
    if messages[0]["role"] == "system":
        if not spec["system"]:
            hint = "; data.chat_template=gemma3 puts it before the first user message" if family == "gemma" else ""
            raise ChatTemplateError(f"messages[0]: the {family} template has no system role (it refuses system "
                                    f"messages){hint}")
        system, messages = messages[0]["content"], messages[1:]
    offset = int(system is not None)
    for i, m in enumerate(messages):
        expected = ("user", "assistant")[i % 2]
        if m["role"] != expected:
            raise ChatTemplateError(f"messages[{i + offset}]: the {family} template needs user and assistant turns "
                                    f"alternating, starting with user, after an optional first system message; "
                                    f"got {m['role']!r} where {expected!r} belongs")
    return system, messages


def _chatml(family, spec, messages, add_generation_prompt, bos, eos):
    text = ""
    if spec.get("default_system") and messages[0]["role"] != "system":
        text += f"<|im_start|>system\n{spec['default_system']}<|im_end|>\n"
    last_query = len(messages) - 1  # qwen3: the last user message that is not a tool response
    for i, m in reversed(list(enumerate(messages))):
        c = m["content"]
        if m["role"] == "user" and not (c.startswith("<tool_response>") and c.endswith("</tool_response>")):
            last_query = i
            break
    for i, m in enumerate(messages):
        content = m["content"]
        if spec.get("think") and m["role"] == "assistant":
            reasoning = ""
            if "</think>" in content:
                reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
                content = content.split("</think>")[-1].lstrip("\n")
            if i > last_query and (i == len(messages) - 1 or reasoning):
                content = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
        text += f"<|im_start|>{m['role']}\n{content}<|im_end|>\n"
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _llama3(family, spec, messages, add_generation_prompt, bos, eos):
    text = bos
    if "date" in spec:
        system = ""
        if messages[0]["role"] == "system":
            system, messages = messages[0]["content"].strip(), messages[1:]
        date = datetime.now().strftime("%d %b %Y") if spec["date"] == "today" else spec["date"]
        text += (f"<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                 f"Today Date: {date}\n\n{system}<|eot_id|>")
    for m in messages:
        text += f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
    return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


def _mistral(family, spec, messages, add_generation_prompt, bos, eos):
    system, messages = _leading_system(family, spec, messages)
    space = " " if spec["system"] else ""  # the current template puts a space before [INST] and the reply
    text = bos
    for i, m in enumerate(messages):
        if m["role"] == "user":
            content = m["content"] if i or system is None else f"{system}\n\n{m['content']}"
            text += f"{space}[INST] {content} [/INST]"
        else:
            text += f"{space}{m['content']}{eos}"
    return text  # these templates have no generation prompt: the prompt ends with " [/INST]"


def _gemma(family, spec, messages, add_generation_prompt, bos, eos):
    system, messages = _leading_system(family, spec, messages)
    text = bos
    for i, m in enumerate(messages):
        prefix = f"{system}\n\n" if i == 0 and system is not None else ""
        role = "model" if m["role"] == "assistant" else "user"
        text += f"<start_of_turn>{role}\n{prefix}{m['content'].strip()}<end_of_turn>\n"
    return text + ("<start_of_turn>model\n" if add_generation_prompt else "")


def _phi3(family, spec, messages, add_generation_prompt, bos, eos):
    text = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages
                   if not (spec.get("skip_empty_system") and m["role"] == "system" and not m["content"]))
    return text + ("<|assistant|>\n" if add_generation_prompt else eos)


def _zephyr(family, spec, messages, add_generation_prompt, bos, eos):
    text = "".join(f"<|{m['role']}|>\n{m['content']}{eos}\n" for m in messages)
    return text + ("<|assistant|>\n" if add_generation_prompt else "")


_RENDERERS = {"chatml": _chatml, "llama3": _llama3, "mistral": _mistral, "gemma": _gemma, "phi3": _phi3,
              "zephyr": _zephyr}
