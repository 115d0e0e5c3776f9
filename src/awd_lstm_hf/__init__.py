"""AWD-LSTM / ULMFiT for Hugging Face transformers. Importing the package registers the Auto classes..."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from .configuration_awd_lstm import AWDLSTMConfig
from .modeling_awd_lstm import (
    AWDLSTMCache,
    AWDLSTMForCausalLM,
    AWDLSTMForSequenceClassification,
    AWDLSTMModel,
    AWDLSTMPreTrainedModel,
)
from .tokenization_awd_lstm import AWDLSTMTokenizer

AutoConfig.register(AWDLSTMConfig.model_type, AWDLSTMConfig, exist_ok=True)
AutoModel.register(AWDLSTMConfig, AWDLSTMModel, exist_ok=True)
AutoModelForCausalLM.register(AWDLSTMConfig, AWDLSTMForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(AWDLSTMConfig, AWDLSTMForSequenceClassification, exist_ok=True)
AutoTokenizer.register(AWDLSTMConfig, tokenizer_class=AWDLSTMTokenizer, exist_ok=True)
# ... and makes every `save_pretrained` copy our code files next to the weights, so that a saved folder
# loads with `trust_remote_code=True` where the package is not installed (hf_integration.md section 2).
AWDLSTMConfig.register_for_auto_class()
AWDLSTMModel.register_for_auto_class("AutoModel")
AWDLSTMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
AWDLSTMForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
AWDLSTMTokenizer.register_for_auto_class("AutoTokenizer")

__all__ = [
    "AWDLSTMCache",
    "AWDLSTMConfig",
    "AWDLSTMForCausalLM",
    "AWDLSTMForSequenceClassification",
    "AWDLSTMModel",
    "AWDLSTMPreTrainedModel",
    "AWDLSTMTokenizer",
]
