"""Memory layers: product-key memory (PKM / Memory+), shared value pools, sharded value
tables, slot-access statistics, and Sparse Memory Finetuning (TF-IDF slot selection) with
LoRA as a baseline."""
from memory_layers.access_stats import SlotAccess, slot_access_counts
from memory_layers.dense_reference import dense_lookup, dense_memory
from memory_layers.lora import init_lora, lora_targets, merge_lora
from memory_layers.product_key_memory import ProductKeyMemory
from memory_layers.product_keys import SlotLookup, product_key_search
from memory_layers.sparse_finetuning import memory_layers_of, reading_apply, sparse_step
from memory_layers.tfidf import select_slots, tfidf_scores
from memory_layers.value_learning_rate import scale_value_updates, value_table_labels
from memory_layers.value_pool import ValuePool, ValueTable
from memory_layers.value_read import read_values, read_values_sharded
