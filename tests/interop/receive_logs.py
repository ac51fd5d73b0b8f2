#!/usr/bin/env python
# RabbitMQ tutorial 3, "Publish/Subscribe": the consumer, as published for pika 1.x
# (https://www.rabbitmq.com/tutorials/tutorial-three-python). Only changes: the broker host is
# $AMQP_HOST when set (the interop tests use 127.0.0.1), `localhost` otherwise, and every print
# has flush=True so the tests see each line as it is printed.
import os
import pika

connection = pika.BlockingConnection(
    pika.ConnectionParameters(host=os.environ.get('AMQP_HOST', 'localhost')))
channel = connection.channel()

channel.exchange_declare(exchange='logs', exchange_type='fanout')

result = channel.queue_declare(queue='', exclusive=True)
queue_name = result.method.queue

channel.queue_bind(exchange='logs', queue=queue_name)

print(' [*] Waiting for logs. To exit press CTRL+C', flush=True)

def callback(ch, method, properties, body):
    print(f" [x] {body}", flush=True)

channel.basic_consume(
    queue=queue_name, on_message_callback=callback, auto_ack=True)

channel.start_consuming()
